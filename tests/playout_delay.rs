//! Latency modes with a real browser: `lowest` negotiates the playout-delay extension and the
//! page shows frames as soon as they arrive; `smooth` leaves the extension out of the answer and
//! the browser's jitter buffer holds frames back.
//!
//! On a clean loopback Chromium's jitter buffer has nothing to smooth and sometimes adds no
//! delay at all, so the comparison runs where it must work: the browser sits behind a link with
//! jitter (a network namespace and the userspace netem of `common/impair.rs`: 30 ms ± 25 ms each
//! way, the delay redrawn every 150 ms so whole frames come early or late; no loss). There
//! `smooth` holds early frames back while `lowest` shows every frame as it completes; an
//! extension that is missing from the packets, or ignored, makes the two alike.

mod common;
use common::impair::{HOST_IP, ImpairedNs, Impairment};
use common::*;
use std::time::Duration;

/// Median of (presentation time − receive time) over 90 presented frames, from the page's own
/// requestVideoFrameCallback, the browser's own mean jitter-buffer delay, and whether the
/// camera's answer carries the extension.
const PROBE_JS: &str = r#"(async () => {
  const cam = [...window.campeer.cams.values()][0];
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
    let listen = format!("{HOST_IP}:0");
    let rtc_bind = format!("[\"{HOST_IP}:0\"]");
    let mut cam = Campeer::start(
        &[
            "run", "--video", "test", "--audio", "test", "--listen", &listen,
        ],
        &[
            ("CAMPEER__CAMERA__LATENCY", mode),
            ("CAMPEER__CAMERA__RTC_BIND", &rtc_bind),
            ("CAMPEER__VIDEO__WIDTH", "640"),
            ("CAMPEER__VIDEO__HEIGHT", "480"),
        ],
    );
    let url = cam.room_url();
    let mut page = browser.open(&url).await;
    // Let the jitter buffer settle on the link before measuring.
    page.wait_frames(60, Duration::from_secs(30)).await;
    let v: serde_json::Value =
        serde_json::from_str(page.eval(PROBE_JS).await.as_str().expect("probe result"))
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
    assert!(
        netns::available(),
        "this test puts the browser in a network namespace: run it as root (the README's test command does)"
    );
    let tag = format!("pd{:04x}", rand::random::<u16>());
    let link = ImpairedNs::new(
        &tag,
        Impairment {
            delay: Duration::from_millis(30),
            jitter: Duration::from_millis(25),
            jitter_period: Duration::from_millis(150),
            loss: 0.0,
        },
    );
    let browser = Browser::launch_in(Some(&link.ns));
    let lowest = probe(&browser, "lowest").await;
    let smooth = probe(&browser, "smooth").await;
    eprintln!(
        "behind 30 ms ± 25 ms: presentation - receive median lowest {:.1} ms, smooth {:.1} ms; \
         jitter buffer lowest {:.1} ms, smooth {:.1} ms; link: {}",
        lowest.median,
        smooth.median,
        lowest.jitter_buffer,
        smooth.jitter_buffer,
        link.report()
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
    // The jitter buffer holds smooth's frames for the jitter it sees; lowest's are shown as
    // they complete.
    assert!(
        smooth.median - lowest.median >= 5.0,
        "lowest {:.1} ms should be well under smooth {:.1} ms behind a jittery link",
        lowest.median,
        smooth.median
    );
    // The browser's own account agrees: its jitter buffer holds lowest's frames for nothing.
    assert!(
        smooth.jitter_buffer - lowest.jitter_buffer >= 5.0,
        "jitter-buffer delay: lowest {:.1} ms, smooth {:.1} ms",
        lowest.jitter_buffer,
        smooth.jitter_buffer
    );
    assert!(lowest.text.contains("lowest latency"), "{}", lowest.text);
    assert!(smooth.text.contains("smooth"), "{}", smooth.text);
}
