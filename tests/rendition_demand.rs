//! A lower rendition encodes only while someone holds it: nothing comes out of it before its
//! first user, its first frame once held is a keyframe with SPS/PPS (a viewer moving to it can
//! start at once), it keeps running while any user is left, and it falls silent after its last
//! one lets go. Real GStreamer pipeline, test pattern.

mod common;
use campeer::media::h264;
use campeer::media::pipeline::{EncodedFrame, MediaPipeline, MediaSettings};
use campeer::media::rendition::RungSpec;
use campeer::media::source::{AudioSource, VideoSource};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// Frames `rx` receives within `window`, from what is queued now on (`fresh`: dropping what was
/// queued before).
async fn frames_within(
    rx: &mut broadcast::Receiver<Arc<EncodedFrame>>,
    window: Duration,
    fresh: bool,
) -> Vec<Arc<EncodedFrame>> {
    if fresh {
        *rx = rx.resubscribe();
    }
    let end = Instant::now() + window;
    let mut got = Vec::new();
    while let Ok(r) = tokio::time::timeout_at(end.into(), rx.recv()).await {
        match r {
            Ok(f) => got.push(f),
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lower_rendition_runs_from_its_first_user_to_its_last() {
    let rung = RungSpec {
        width: 320,
        height: 240,
        bitrate_kbps: 300,
    };
    let media = MediaPipeline::build(&MediaSettings {
        lower_rungs: vec![rung],
        ..common::media::settings(VideoSource::Test, AudioSource::None)
    })
    .expect("test-pattern pipeline");
    let lower = media
        .renditions
        .first()
        .expect("the lower rendition")
        .clone();
    let mut main = media.video.subscribe();
    let mut rx = lower.video.subscribe();
    media
        .start(Duration::from_secs(10))
        .expect("pipeline plays");

    // The main encode runs; the lower one, held by nobody, sends nothing.
    assert!(
        frames_within(&mut main, Duration::from_secs(1), true)
            .await
            .len()
            >= 3,
        "the main encode runs"
    );
    let idle = frames_within(&mut rx, Duration::from_secs(1), true).await;
    assert!(
        idle.is_empty(),
        "{} frames from a rendition nobody holds",
        idle.len()
    );

    // Its first user: frames flow, the first a keyframe with SPS/PPS. (Nothing was queued since
    // the idle check, so none is skipped however late this task runs.)
    let first = lower.acquire();
    let held = frames_within(&mut rx, Duration::from_secs(2), false).await;
    assert!(
        held.len() >= 5,
        "only {} frames in 2 s once held",
        held.len()
    );
    assert!(held[0].keyframe, "the first frame once held is a keyframe");
    assert_eq!(
        h264::idr_has_headers(&held[0].data),
        Some(true),
        "SPS/PPS in front of it"
    );

    // A second user, then the first lets go: it keeps running for the one left.
    let second = lower.acquire();
    drop(first);
    let one_left = frames_within(&mut rx, Duration::from_secs(1), true).await;
    assert!(
        one_left.len() >= 3,
        "only {} frames in 1 s with one user left",
        one_left.len()
    );

    // The last lets go: silent again, once a frame already inside the encoder is out (on a
    // loaded machine that can take a moment: up to 5 s for half a second without one).
    drop(second);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !frames_within(&mut rx, Duration::from_millis(500), false)
        .await
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the rendition still sends 5 s after its last user let go"
        );
    }
    let after = frames_within(&mut rx, Duration::from_secs(1), false).await;
    assert!(
        after.is_empty(),
        "{} frames after the last user let go",
        after.len()
    );
    // The main encode never stopped.
    assert!(
        frames_within(&mut main, Duration::from_secs(1), true)
            .await
            .len()
            >= 3
    );
    media.stop();
}
