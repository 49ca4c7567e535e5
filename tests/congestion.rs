//! Watchable on a slow link: a Chromium viewer behind a 1 Mbit/s link (`tbf`, 32 KB bucket,
//! 50 ms queue, on the camera→viewer direction) of a 1280x720 camera configured for 2,500 kbit/s.
//! Without congestion control the link drops most of every keyframe and the viewer sees a frame
//! or two in half a minute; with it, its estimate (transport-cc feedback, GCC) moves it to the
//! lower rendition, whose packets are paced, and it watches smoothly. A second, unlimited viewer
//! of the same camera keeps the main rendition: one encode per rung, counted in `/metrics`.
//!
//! Two Chromiums decoding, two x264 encodes and a debug build fill this 2-core machine, and a
//! busy moment lowers every viewer's frame rate alike; so the slow viewer is held to what the
//! unlimited one sees in the same seconds (the same run's baseline), and to receiving what its
//! rendition encoded. The absolute figures (fps, share of the link) are printed; with the machine
//! otherwise idle they were 28.4–29.6 fps and 78–79 % of the link.

mod common;
use common::shaped::{HOST_IP, ShapedNs};
use common::*;
use serde_json::Value;
use std::time::Duration;

/// Seconds of each measurement.
const WINDOW_S: u64 = 20;

/// Over [`WINDOW_S`] seconds: frames presented (requestVideoFrameCallback), the longest time
/// without a new frame, what the browser received (video and audio), its decoded size.
const MEASURE_JS: &str = r#"(async () => {
  const cam = [...window.campeer.cams.values()][0];
  const v = cam.video;
  const stat = async () => {
    const s = await cam.pc.getStats();
    const r = { bytes: 0 };
    s.forEach((x) => {
      if (x.type !== 'inbound-rtp') return;
      r.bytes += x.bytesReceived || 0;
      if (x.kind === 'video') { r.vbytes = x.bytesReceived; r.width = x.frameWidth; r.height = x.frameHeight;
        r.decoded = x.framesDecoded; r.lost = x.packetsLost; r.nacks = x.nackCount;
        r.rtx = x.retransmittedPacketsReceived || 0; r.plis = x.pliCount; }
    });
    return r;
  };
  const s0 = await stat();
  const t0 = performance.now();
  const times = [];
  await new Promise((resolve) => {
    setTimeout(resolve, WINDOW_S * 1000 + 500);
    const cb = (now) => {
      times.push(now);
      if (now - t0 >= WINDOW_S * 1000) resolve(); else v.requestVideoFrameCallback(cb);
    };
    v.requestVideoFrameCallback(cb);
  });
  const t1 = performance.now();
  const s1 = await stat();
  let gap = times.length ? Math.max(times[0] - t0, t1 - times[times.length - 1]) : t1 - t0;
  for (let i = 1; i < times.length; i++) gap = Math.max(gap, times[i] - times[i - 1]);
  return JSON.stringify({ secs: (t1 - t0) / 1000, frames: times.length, gap,
    kbps: 8 * (s1.bytes - s0.bytes) / (t1 - t0), vbytes: s1.vbytes - s0.vbytes, width: s1.width, height: s1.height,
    lost: s1.lost - s0.lost, nacks: s1.nacks - s0.nacks, rtx: s1.rtx - s0.rtx, plis: s1.plis - s0.plis });
})()"#;

#[derive(Debug)]
struct Watched {
    fps: f64,
    longest_gap_ms: f64,
    kbps: f64,
    width: u64,
    height: u64,
    lost: i64,
    /// Video payload bytes received in the window.
    video_bytes: f64,
    nacks: i64,
    retransmitted: i64,
    plis: i64,
}

async fn watch(page: &mut Page) -> Watched {
    let js = MEASURE_JS.replace("WINDOW_S", &WINDOW_S.to_string());
    let v: Value = serde_json::from_str(page.eval(&js).await.as_str().expect("measure result"))
        .expect("measure JSON");
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    Watched {
        fps: f("frames") / f("secs"),
        longest_gap_ms: f("gap"),
        kbps: f("kbps"),
        width: v["width"].as_u64().unwrap_or(0),
        height: v["height"].as_u64().unwrap_or(0),
        lost: v["lost"].as_i64().unwrap_or(-1),
        video_bytes: f("vbytes"),
        nacks: v["nacks"].as_i64().unwrap_or(-1),
        retransmitted: v["rtx"].as_i64().unwrap_or(-1),
        plis: v["plis"].as_i64().unwrap_or(-1),
    }
}

/// A camera listening on the host end of the shaped link, 1280x720@30 at 2,500 kbit/s.
fn camera() -> (Campeer, String) {
    let mut c = Campeer::start(
        &[
            "run",
            "--video",
            "test",
            "--audio",
            "test",
            "--listen",
            &format!("{HOST_IP}:0"),
        ],
        &[
            ("CAMPEER__VIDEO__WIDTH", "1280"),
            ("CAMPEER__VIDEO__HEIGHT", "720"),
            ("CAMPEER__VIDEO__FRAMERATE", "30"),
            ("CAMPEER__VIDEO__BITRATE_KBPS", "2500"),
            ("CAMPEER__CAMERA__RTC_BIND", &format!("[\"{HOST_IP}:0\"]")),
            // The test reads /metrics through the link's address, not loopback.
            ("CAMPEER__SERVER__METRICS_TOKEN", METRICS_TOKEN),
        ],
    );
    let url = c.room_url();
    (c, url)
}

const METRICS_TOKEN: &str = "congestion-test";

async fn metric(base: &str, name: &str) -> Vec<String> {
    let auth = format!("Authorization: Bearer {METRICS_TOKEN}");
    let (_, text) = http_get_with(base, "/metrics", &[&auth]).await;
    text.lines()
        .filter(|l| l.starts_with(name))
        .map(str::to_owned)
        .collect()
}

/// Bytes rung 1 has encoded so far (`campeer_rendition_video_bytes_total`).
async fn rung1_bytes(base: &str) -> f64 {
    metric(base, "campeer_rendition_video_bytes_total")
        .await
        .iter()
        .find(|l| l.contains("rung=\"1\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_behind_1_mbit_watches_smoothly_beside_an_unlimited_one() {
    if !netns::available() {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    let link = ShapedNs::new("cpcc1", Some(1000));
    let (mut cam, url) = camera();
    let base = base_of(&url);

    let slow_browser = Browser::launch_in(Some(&link.ns));
    let mut slow = slow_browser.open(&url).await;
    slow.wait_frames(1, Duration::from_secs(30)).await;
    // An unlimited viewer on the host itself, in the same room.
    let fast_browser = Browser::launch();
    let mut fast = fast_browser.open(&url).await;
    fast.wait_frames(1, Duration::from_secs(30)).await;
    // The estimates settle and the slow viewer moves to the lower rung within seconds.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let encoded_before = rung1_bytes(&base).await;
    let (w, f) = tokio::join!(watch(&mut slow), watch(&mut fast));
    let encoded = rung1_bytes(&base).await - encoded_before;
    eprintln!(
        "congestion: 1 Mbit/s viewer: {:.1} fps, longest freeze {:.0} ms, {:.0} kbit/s received, {}x{}, {} lost, {} NACKs, {} retransmitted, {} PLIs; link: {}",
        w.fps,
        w.longest_gap_ms,
        w.kbps,
        w.width,
        w.height,
        w.lost,
        w.nacks,
        w.retransmitted,
        w.plis,
        link.stats()
    );
    eprintln!(
        "congestion: unlimited viewer: {:.1} fps, longest freeze {:.0} ms, {:.0} kbit/s received, {}x{}",
        f.fps, f.longest_gap_ms, f.kbps, f.width, f.height
    );
    let mut encoders = Vec::new();
    for m in [
        "campeer_viewer_estimate_bps",
        "campeer_viewer_rung",
        "campeer_viewer_late_drops_total",
        "campeer_viewer_resends_dropped_total",
        "campeer_video_encoders_running",
        "campeer_rendition_viewers",
    ] {
        let lines = metric(&base, m).await;
        eprintln!("congestion: {lines:?}");
        if m == "campeer_video_encoders_running" {
            encoders = lines;
        }
    }
    eprintln!(
        "congestion: the 1 Mbit/s viewer received {:.0} % of what its rendition encoded; {:.0} % of the link; {:.0} % of the unlimited viewer's frames",
        100.0 * w.video_bytes / encoded,
        w.kbps / 10.0,
        100.0 * w.fps / f.fps
    );
    assert!(
        w.fps >= 0.85 * f.fps && w.fps >= 15.0,
        "the 1 Mbit/s viewer saw {:.1} fps, the unlimited one {:.1}: {w:?}",
        w.fps,
        f.fps
    );
    assert!(
        w.longest_gap_ms <= 1000.0,
        "the 1 Mbit/s viewer froze for {:.0} ms (want ≤ 1 s): {w:?}",
        w.longest_gap_ms
    );
    // Payload bytes the page counts, against the encoder's access units (which carry start
    // codes the RTP payloads do not): a link that drops or delays the rendition shows here.
    assert!(
        w.video_bytes >= 0.85 * encoded,
        "the 1 Mbit/s viewer received {:.0} of the {encoded:.0} bytes its rendition encoded: {w:?}",
        w.video_bytes
    );
    assert!(
        w.width == 640 && w.height == 360,
        "the 1 Mbit/s viewer should watch the lower rendition: {w:?}"
    );
    assert!(
        f.width == 1280 && f.height == 720 && f.kbps >= 2000.0,
        "the unlimited viewer should keep the main rendition: {f:?}"
    );
    assert_eq!(
        encoders,
        ["campeer_video_encoders_running 2"],
        "one encode per rung: the main one and the lower one"
    );
    drop(cam.wait_log("lower rendition started", Duration::from_secs(1)));
}
