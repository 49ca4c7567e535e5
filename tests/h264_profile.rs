//! What an answer says about the H.264 stream is what the stream's SPS says: the level follows
//! the resolution (1080p is level 4, not the 3.1 every answer used to claim), and a `pipeline:`
//! source that already sends H.264 is passed through with its own profile, to the viewers whose
//! offers have that profile; the others are told why they cannot watch.

mod common;

use common::Campeer;
use common::rtc_viewer::{RtcViewer, assert_smpte_bars};
use std::time::{Duration, Instant};

fn camera(video: &str, env: &[(&str, &str)]) -> Campeer {
    let mut all = vec![("CAMPEER__VIDEO__ENCODER", "x264enc")];
    all.extend_from_slice(env);
    Campeer::start(
        &[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--video",
            video,
            "--audio",
            "none",
        ],
        &all,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_states_the_level_the_stream_has() {
    // (width, height, fps, level by H.264 Table A-1)
    for (w, h, fps, level) in [(640, 480, 30, 30u8), (1920, 1080, 10, 40)] {
        let mut cam = camera(
            "test",
            &[
                ("CAMPEER__VIDEO__WIDTH", &w.to_string()),
                ("CAMPEER__VIDEO__HEIGHT", &h.to_string()),
                ("CAMPEER__VIDEO__FRAMERATE", &fps.to_string()),
            ],
        );
        let viewer = RtcViewer::connect(&cam.room_url()).await;
        let (said, sps) = viewer.wait_answer_and_sps().await;
        eprintln!(
            "{w}x{h}@{fps}: SPS {} ({sps}), answer profile-level-id {}",
            sps.profile_level_id(),
            said.profile_level_id()
        );
        assert!(sps.is_constrained_baseline(), "SPS {sps}");
        assert_eq!(said.profile(), sps.profile(), "answer {said} vs SPS {sps}");
        assert_eq!(said.level_idc, sps.level_idc, "answer {said} vs SPS {sps}");
        assert_eq!(sps.level_idc, level, "{w}x{h}@{fps} encoded at {sps}");
        let picture = viewer.wait_frames(10, Duration::from_secs(20)).await;
        assert_eq!((picture.width, picture.height), (w, h));
        viewer.close().await;
        drop(cam);
    }
}

/// High profile from an encoder inside the description, with a 10 s keyframe interval.
const HIGH_SOURCE: &str = "pipeline:videotestsrc is-live=true pattern=smpte ! \
    video/x-raw,width=320,height=240,framerate=30/1 ! \
    x264enc tune=zerolatency speed-preset=superfast key-int-max=300 bframes=0 ! \
    video/x-h264,profile=high";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_from_the_source_is_passed_through_with_its_profile() {
    let mut cam = camera(HIGH_SOURCE, &[]);
    let url = cam.room_url();
    let built = cam.wait_log("media pipeline built", Duration::from_secs(10));
    assert!(built.contains("encoder=passthrough"), "{built}");

    // A viewer that decodes only constrained baseline is told why it gets nothing.
    let cb_only = RtcViewer::connect_offering(&url, &["42e01f"]).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let (code, message) = loop {
        if let Some(r) = cb_only.received.lock().unwrap().refused.clone() {
            break r;
        }
        assert!(Instant::now() < deadline, "no refusal within 15 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(code, "no-h264");
    assert!(message.contains("high"), "{message}");
    cb_only.close().await;

    // One that also offers high gets the stream as the source made it, and its first picture
    // long before the source's own next keyframe (10 s): the keyframe request reached the
    // encoder inside the description.
    let asked = Instant::now();
    let viewer = RtcViewer::connect_offering(&url, &["42e01f", "640032"]).await;
    let (said, sps) = viewer.wait_answer_and_sps().await;
    eprintln!(
        "passthrough: SPS {} ({sps}), answer {}",
        sps.profile_level_id(),
        said.profile_level_id()
    );
    assert_eq!(sps.profile_idc, 100, "SPS {sps}");
    assert_eq!(said.profile(), sps.profile());
    assert_eq!(said.level_idc, sps.level_idc);
    let picture = viewer.wait_frames(5, Duration::from_secs(5)).await;
    let first_picture = asked.elapsed();
    eprintln!("first pictures after {first_picture:?}");
    assert_eq!((picture.width, picture.height), (320, 240));
    assert_smpte_bars(&picture);
    viewer.close().await;
    drop(cam);
}
