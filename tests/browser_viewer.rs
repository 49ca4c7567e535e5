//! The spine, end to end: `campeer run` (embedded server, test video 1280x720@30 + test audio),
//! the room page in a real headless Chromium, and what the viewer sees in `getStats()`.

mod common;
use common::playback::{CAMPEER_PAGE, watch};
use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_decodes_video_and_receives_audio() {
    let (mut cam, url) = start_camera(&[], &[]);
    assert!(
        url.contains("?token=v1."),
        "a protected room's URL carries a viewer token: {url}"
    );
    let browser = Browser::launch();
    let mut page = browser.open(&url).await;
    let tile = page.wait_frames(60, Duration::from_secs(30)).await;
    assert_eq!(tile.frame_width, 1280, "{tile:?}");
    assert_eq!(tile.frame_height, 720, "{tile:?}");
    assert!(tile.codec.eq_ignore_ascii_case("video/H264"), "{tile:?}");
    // Audio arrives too, and video keeps flowing without freezes: no gap over 500 ms in 3 s.
    // (Chromium's own `freezeCount` counts from the call's first frame, where a loaded
    // machine's start-up stall of ~200 ms already counts as one.)
    let w = watch(&mut page, 3, CAMPEER_PAGE).await;
    assert_eq!(w.freezes, 0, "no freeze: {w:?}");
    let tiles = page.tiles().await;
    assert_eq!(tiles.len(), 1, "one camera in the room: {tiles:?}");
    let t = &tiles[0];
    assert!(t.audio_packets > 20, "audio packets received: {t:?}");
    assert!(
        t.frames_decoded >= tile.frames_decoded + 30,
        "video kept decoding: {tile:?} then {t:?}"
    );
    // The answer offers what recovery needs: NACK (over RTX), PLI and FIR for H.264.
    let answer = page
        .eval("[...window.campeer.cams.values()][0].pc.currentRemoteDescription.sdp")
        .await;
    let answer = answer.as_str().unwrap_or_default();
    for needle in [
        "rtx/90000",
        "a=ssrc-group:FID",
        " nack\r\n",
        " nack pli",
        " ccm fir",
        "packetization-mode=1",
    ] {
        assert!(
            answer.contains(needle),
            "answer lacks {needle:?}:\n{answer}"
        );
    }
    // The page shows what it plays.
    let text = page.text().await;
    assert!(
        text.contains("1280×720"),
        "tile shows the live resolution: {text}"
    );
    drop(cam.wait_log("viewer connected", Duration::from_secs(5)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_viewers_both_decode_from_one_encode() {
    let (mut cam, url) = start_camera(&[], &[]);
    let browser = Browser::launch();
    let mut a = browser.open(&url).await;
    let mut b = browser.open(&url).await;
    let ta = a.wait_frames(60, Duration::from_secs(30)).await;
    let tb = b.wait_frames(60, Duration::from_secs(30)).await;
    assert_eq!((ta.frame_width, tb.frame_width), (1280, 1280));
    assert_ne!(ta.id, "", "{ta:?}");
    // One encoder for both: the daemon built exactly one pipeline.
    let logs = cam.logs();
    assert_eq!(logs.matches("media pipeline built").count(), 1, "{logs}");
    let metrics = http_get(&base_of(&url), "/metrics").await.1;
    assert!(metrics.contains("campeer_viewers 2"), "{metrics}");
    // Per-viewer RTT comes from the connection's ICE checks, sampled every 2 s. One check can
    // meet a busy moment (a keyframe going out beside two decoding tabs on two cores), so each
    // viewer's RTT is judged by the median of its samples over 8 s: on loopback it is
    // milliseconds, and an RTT that is really wrong (seconds, or never measured) still shows.
    let mut samples: std::collections::HashMap<String, Vec<f64>> = Default::default();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let metrics = http_get(&base_of(&url), "/metrics").await.1;
        for l in metrics
            .lines()
            .filter(|l| l.starts_with("campeer_viewer_rtt_seconds{"))
        {
            if let (Some(labels), Some(v)) = (l.split(' ').next(), l.rsplit(' ').next()) {
                if let Ok(v) = v.parse::<f64>() {
                    samples.entry(labels.to_owned()).or_default().push(v);
                }
            }
        }
    }
    assert_eq!(samples.len(), 2, "RTT of two viewers: {samples:?}");
    for (viewer, rtts) in &mut samples {
        rtts.sort_by(f64::total_cmp);
        let median = rtts[rtts.len() / 2];
        eprintln!("{viewer}: RTT samples {rtts:?}");
        assert!(
            median > 0.0 && median < 0.1,
            "{viewer}: loopback RTT median {median} s over {rtts:?}"
        );
    }
    drop(cam.wait_log("viewer connected", Duration::from_secs(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_page_gets_video_again() {
    let (mut cam, url) = start_camera(&[], &[]);
    let browser = Browser::launch();
    let mut page = browser.open(&url).await;
    let first = page.wait_frames(30, Duration::from_secs(30)).await;
    // The token is out of the address bar (history, bookmarks, screenshots); the reload below
    // finds it in the tab's own storage.
    let search = page.eval("location.search").await;
    assert_eq!(
        search.as_str(),
        Some(""),
        "the address still holds the token"
    );
    page.reload().await;
    // The new page has a new peer (a new id) that decodes again.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let tiles = page.tiles().await;
        if let Some(t) = tiles.iter().find(|t| t.frames_decoded >= 30) {
            assert_eq!(t.frame_width, 1280);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no video after reload: {tiles:?} (first: {first:?})\n{}",
            cam.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The old viewer is cleaned up: exactly one viewer remains.
    let base = base_of(&url);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let m = http_get(&base, "/metrics").await.1;
        if m.contains("campeer_viewers 1\n") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "old viewer not cleaned up:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(cam.wait_log("viewer gone", Duration::from_secs(1)));
}
