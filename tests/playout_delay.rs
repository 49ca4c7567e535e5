//! Latency modes with a real browser: `lowest` negotiates the playout-delay extension and the
//! page shows frames sooner after they arrive; `smooth` leaves the extension out of the answer.

mod common;
use common::*;
use std::time::Duration;

/// Median of (presentation time − receive time) over 90 presented frames, from the page's own
/// requestVideoFrameCallback, plus whether the camera's answer carries the extension.
const PROBE_JS: &str = r#"(async () => {
  const cam = [...window.campeer.cams.values()][0];
  const v = cam.video;
  const d = [];
  await new Promise((resolve) => {
    const cb = (now, meta) => {
      if (meta.receiveTime !== undefined) d.push(meta.presentationTime - meta.receiveTime);
      if (d.length >= 90) resolve(); else v.requestVideoFrameCallback(cb);
    };
    v.requestVideoFrameCallback(cb);
  });
  d.sort((a, b) => a - b);
  const sdp = cam.pc.currentRemoteDescription.sdp;
  return JSON.stringify({ median: d[45], extmap: sdp.split('\r\n').filter((l) => l.includes('playout-delay')) });
})()"#;

async fn probe(mode: &str) -> (f64, Vec<String>, String) {
    let (mut cam, url) = start_camera(
        &[],
        &[
            ("CAMPEER__CAMERA__LATENCY", mode),
            ("CAMPEER__VIDEO__WIDTH", "640"),
            ("CAMPEER__VIDEO__HEIGHT", "480"),
        ],
    );
    let browser = Browser::launch();
    let mut page = browser.open(&url).await;
    page.wait_frames(30, Duration::from_secs(30)).await;
    let v: serde_json::Value =
        serde_json::from_str(page.eval(PROBE_JS).await.as_str().unwrap()).unwrap();
    let text = page.text().await;
    drop(cam.wait_log("viewer connected", Duration::from_secs(1)));
    let extmap = v["extmap"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_owned())
        .collect();
    (v["median"].as_f64().unwrap(), extmap, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowest_negotiates_playout_delay_and_shows_frames_sooner() {
    let (lowest, lowest_ext, lowest_text) = probe("lowest").await;
    let (smooth, smooth_ext, smooth_text) = probe("smooth").await;
    eprintln!("presentation - receive, median: lowest {lowest:.1} ms, smooth {smooth:.1} ms");
    assert_eq!(
        lowest_ext.len(),
        1,
        "lowest: the answer negotiates the extension: {lowest_ext:?}"
    );
    assert!(lowest_ext[0].starts_with("a=extmap:"), "{lowest_ext:?}");
    assert!(
        smooth_ext.is_empty(),
        "smooth: no extension in the answer: {smooth_ext:?}"
    );
    // With playout-delay 0/0 Chromium shows a frame ~1 ms after its last packet; its own
    // jitter buffer (smooth) holds frames several ms longer, though how long varies per run.
    assert!(
        lowest < 3.0,
        "lowest: presentation - receive median {lowest:.1} ms"
    );
    assert!(
        lowest < smooth,
        "lowest {lowest:.1} ms should be under smooth {smooth:.1} ms"
    );
    assert!(lowest_text.contains("lowest latency"), "{lowest_text}");
    assert!(smooth_text.contains("smooth"), "{smooth_text}");
}
