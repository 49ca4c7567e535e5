//! Latency modes with a real browser: `lowest` negotiates the playout-delay extension and the
//! page shows frames as soon as they arrive; `smooth` leaves the extension out of the answer and
//! the browser's jitter buffer holds frames as long as it chooses.
//!
//! On a clean loopback Chromium's jitter buffer has nothing to smooth and often adds no delay
//! at all, so the page asks for a 150 ms jitter buffer (`RTCRtpReceiver.jitterBufferTarget`,
//! as an app wanting smoothness would) in both modes. `smooth` then holds every frame about that
//! long, while `lowest`'s playout-delay of zero, carried on every video packet, overrides it and
//! frames are shown as they complete. An extension missing from the packets, or ignored, makes
//! the two alike.

mod common;
use common::*;
use std::time::Duration;

/// The jitter buffer the page asks for, ms.
const TARGET_MS: f64 = 150.0;

/// Ask for a [`TARGET_MS`] jitter buffer, let it settle, then measure over 90 presented frames:
/// the median of (presentation time − receive time) from requestVideoFrameCallback, the
/// browser's own mean jitter-buffer delay, and whether the answer carries the extension.
const PROBE_JS: &str = r#"(async () => {
  const cam = [...window.campeer.cams.values()][0];
  const rx = cam.pc.getReceivers().find((r) => r.track && r.track.kind === 'video');
  rx.jitterBufferTarget = TARGET_MS;
  await new Promise((r) => setTimeout(r, 1500));
  const v = cam.video;
  const d = [];
  const jb = async () => {
    const s = await cam.pc.getStats();
    let r = null;
    s.forEach((x) => { if (x.type === 'inbound-rtp' && x.kind === 'video') r = x; });
    return r ? [r.jitterBufferDelay, r.jitterBufferEmittedCount] : [0, 0];
  };
  const before = await jb();
  await new Promise((resolve) => {
    const cb = (now, meta) => {
      if (meta.receiveTime !== undefined) d.push(meta.presentationTime - meta.receiveTime);
      if (d.length >= 90) resolve(); else v.requestVideoFrameCallback(cb);
    };
    v.requestVideoFrameCallback(cb);
  });
  const after = await jb();
  d.sort((a, b) => a - b);
  const jitterBuffer = 1000 * (after[0] - before[0]) / Math.max(1, after[1] - before[1]);
  const sdp = cam.pc.currentRemoteDescription.sdp;
  return JSON.stringify({ median: d[45], jitterBuffer,
    extmap: sdp.split('\r\n').filter((l) => l.includes('playout-delay')) });
})()"#;

struct Probe {
    /// Median presentation − receive, ms.
    median: f64,
    /// The browser's mean jitter-buffer delay over the same frames, ms.
    jitter_buffer: f64,
    extmap: Vec<String>,
    text: String,
}

async fn probe(browser: &Browser, mode: &str) -> Probe {
    let (mut cam, url) = start_camera(
        &[],
        &[
            ("CAMPEER__CAMERA__LATENCY", mode),
            ("CAMPEER__VIDEO__WIDTH", "640"),
            ("CAMPEER__VIDEO__HEIGHT", "480"),
        ],
    );
    let mut page = browser.open(&url).await;
    page.wait_frames(30, Duration::from_secs(30)).await;
    let js = PROBE_JS.replace("TARGET_MS", &TARGET_MS.to_string());
    let v: serde_json::Value =
        serde_json::from_str(page.eval(&js).await.as_str().expect("probe result"))
            .expect("probe JSON");
    let text = page.text().await;
    drop(cam.wait_log("viewer connected", Duration::from_secs(1)));
    Probe {
        median: v["median"].as_f64().expect("median"),
        jitter_buffer: v["jitterBuffer"].as_f64().unwrap_or(f64::NAN),
        extmap: v["extmap"]
            .as_array()
            .expect("extmap lines")
            .iter()
            .filter_map(|l| l.as_str().map(str::to_owned))
            .collect(),
        text,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowest_negotiates_playout_delay_and_shows_frames_sooner() {
    let browser = Browser::launch();
    let lowest = probe(&browser, "lowest").await;
    let smooth = probe(&browser, "smooth").await;
    eprintln!(
        "page asks for a {TARGET_MS} ms jitter buffer: presentation - receive median lowest {:.1} ms, \
         smooth {:.1} ms; browser's jitter-buffer delay lowest {:.1} ms, smooth {:.1} ms",
        lowest.median, smooth.median, lowest.jitter_buffer, smooth.jitter_buffer,
    );
    assert_eq!(
        lowest.extmap.len(),
        1,
        "lowest: the answer negotiates the extension: {:?}",
        lowest.extmap
    );
    assert!(
        lowest.extmap[0].starts_with("a=extmap:"),
        "{:?}",
        lowest.extmap
    );
    assert!(
        smooth.extmap.is_empty(),
        "smooth: no extension in the answer: {:?}",
        smooth.extmap
    );
    // smooth holds frames for (most of) the jitter buffer the page asked for; lowest's zero
    // playout delay overrides it. Both by the page's clock and by the browser's own account.
    for (what, l, s) in [
        ("presentation - receive", lowest.median, smooth.median),
        (
            "jitter-buffer delay",
            lowest.jitter_buffer,
            smooth.jitter_buffer,
        ),
    ] {
        assert!(
            l < TARGET_MS / 5.0,
            "lowest: {what} {l:.1} ms: the playout delay of zero is not honoured"
        );
        assert!(
            s > TARGET_MS / 2.0,
            "smooth: {what} {s:.1} ms: the browser did not hold frames as asked"
        );
    }
    assert!(lowest.text.contains("lowest latency"), "{}", lowest.text);
    assert!(smooth.text.contains("smooth"), "{}", smooth.text);
}
