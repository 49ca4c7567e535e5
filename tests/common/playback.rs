//! What a viewer sees over a window of time, measured by its page: frames presented
//! (requestVideoFrameCallback), freezes (gaps between presented frames), what the browser
//! received, and the decoded size. For campeer's viewer page and for any page holding an
//! `RTCPeerConnection` and a `<video>` element.
#![allow(dead_code)]

use super::Page;
use serde_json::Value;

/// On campeer's viewer page: its first tile's connection and video element.
pub const CAMPEER_PAGE: (&str, &str) = (
    "[...window.campeer.cams.values()][0].pc",
    "[...window.campeer.cams.values()][0].video",
);

/// A gap between presented frames longer than this counts as a freeze.
pub const FREEZE_MS: f64 = 500.0;

const MEASURE_JS: &str = r#"(async () => {
  const pc = PC_EXPR;
  const v = VIDEO_EXPR;
  const stat = async () => {
    const s = await pc.getStats();
    const r = { bytes: 0 };
    s.forEach((x) => {
      if (x.type !== 'inbound-rtp') return;
      r.bytes += x.bytesReceived || 0;
      if (x.kind === 'video') { r.vbytes = x.bytesReceived;
        r.width = x.frameWidth; r.height = x.frameHeight;
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
  const gaps = [];
  if (times.length) { gaps.push(times[0] - t0); gaps.push(t1 - times[times.length - 1]); }
  else gaps.push(t1 - t0);
  for (let i = 1; i < times.length; i++) gaps.push(times[i] - times[i - 1]);
  const frozen = gaps.filter((g) => g > FREEZE_MS);
  return JSON.stringify({ secs: (t1 - t0) / 1000, frames: times.length, gap: Math.max(...gaps),
    freezes: frozen.length, frozen: frozen.reduce((a, b) => a + b, 0),
    kbps: 8 * (s1.bytes - s0.bytes) / (t1 - t0), vbytes: s1.vbytes - s0.vbytes,
    width: s1.width, height: s1.height, lost: s1.lost - s0.lost, nacks: s1.nacks - s0.nacks,
    rtx: s1.rtx - s0.rtx, plis: s1.plis - s0.plis });
})()"#;

/// One window's figures.
#[derive(Debug, Clone, Default)]
pub struct Watched {
    /// Frames presented per second.
    pub fps: f64,
    /// The longest time without a new frame, ms.
    pub longest_gap_ms: f64,
    /// Gaps over [`FREEZE_MS`], and their total, ms.
    pub freezes: u64,
    pub frozen_ms: f64,
    /// Everything received (video and audio payloads), kbit/s.
    pub kbps: f64,
    /// Video payload bytes received.
    pub video_bytes: f64,
    pub width: u64,
    pub height: u64,
    pub lost: i64,
    pub nacks: i64,
    pub retransmitted: i64,
    pub plis: i64,
}

/// Measure `secs` seconds on `page`, whose connection and video element are `target`
/// (e.g. [`CAMPEER_PAGE`]).
pub async fn watch(page: &mut Page, secs: u64, target: (&str, &str)) -> Watched {
    let js = MEASURE_JS
        .replace("PC_EXPR", target.0)
        .replace("VIDEO_EXPR", target.1)
        .replace("WINDOW_S", &secs.to_string())
        .replace("FREEZE_MS", &FREEZE_MS.to_string());
    let v: Value = serde_json::from_str(page.eval(&js).await.as_str().expect("measure result"))
        .expect("measure JSON");
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let i = |k: &str| v[k].as_i64().unwrap_or(-1);
    Watched {
        fps: f("frames") / f("secs"),
        longest_gap_ms: f("gap"),
        freezes: v["freezes"].as_u64().unwrap_or(0),
        frozen_ms: f("frozen"),
        kbps: f("kbps"),
        video_bytes: f("vbytes"),
        width: v["width"].as_u64().unwrap_or(0),
        height: v["height"].as_u64().unwrap_or(0),
        lost: i("lost"),
        nacks: i("nacks"),
        retransmitted: i("rtx"),
        plis: i("plis"),
    }
}

/// [`watch`] over a window longer than one DevTools call may take: measured in windows of at
/// most 30 s, combined (a gap across two windows counts as two).
pub async fn watch_long(page: &mut Page, secs: u64, target: (&str, &str)) -> Watched {
    let mut parts = Vec::new();
    let mut left = secs;
    while left > 0 {
        let n = left.min(30);
        parts.push((n as f64, watch(page, n, target).await));
        left -= n;
    }
    let total: f64 = parts.iter().map(|(n, _)| n).sum();
    let mut all = parts.last().map(|(_, w)| w.clone()).unwrap_or_default();
    let sum = |f: fn(&Watched) -> f64| parts.iter().map(|(n, w)| n * f(w)).sum::<f64>() / total;
    all.fps = sum(|w| w.fps);
    all.kbps = sum(|w| w.kbps);
    all.longest_gap_ms = parts
        .iter()
        .map(|(_, w)| w.longest_gap_ms)
        .fold(0.0, f64::max);
    all.freezes = parts.iter().map(|(_, w)| w.freezes).sum();
    all.frozen_ms = parts.iter().map(|(_, w)| w.frozen_ms).sum();
    all.video_bytes = parts.iter().map(|(_, w)| w.video_bytes).sum();
    let count = |f: fn(&Watched) -> i64| parts.iter().map(|(_, w)| f(w)).sum::<i64>();
    all.lost = count(|w| w.lost);
    all.nacks = count(|w| w.nacks);
    all.retransmitted = count(|w| w.retransmitted);
    all.plis = count(|w| w.plis);
    all
}

/// The decoded video size the page shows now (0x0 before the first frame).
pub async fn size(page: &mut Page, target: (&str, &str)) -> (u64, u64) {
    let js = format!(
        "(async () => {{ const s = await ({}).getStats(); let r = [0, 0]; \
         s.forEach((x) => {{ if (x.type === 'inbound-rtp' && x.kind === 'video') r = [x.frameWidth || 0, x.frameHeight || 0]; }}); \
         return JSON.stringify(r); }})()",
        target.0
    );
    let v: Value =
        serde_json::from_str(page.eval(&js).await.as_str().unwrap_or("[0,0]")).unwrap_or_default();
    (v[0].as_u64().unwrap_or(0), v[1].as_u64().unwrap_or(0))
}

impl std::fmt::Display for Watched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1} fps, {} freezes ({:.0} ms in all, longest gap {:.0} ms), {:.0} kbit/s, {}x{}, {} lost, {} NACKs, {} retransmitted, {} PLIs",
            self.fps,
            self.freezes,
            self.frozen_ms,
            self.longest_gap_ms,
            self.kbps,
            self.width,
            self.height,
            self.lost,
            self.nacks,
            self.retransmitted,
            self.plis
        )
    }
}

/// Start noting, in the page itself, the longest time between presented frames of `target`'s
/// video element, for as long as a test does something else ([`longest_gap`] reads it).
/// Measured by the page's own clock (requestVideoFrameCallback), so a slow DevTools call on
/// a loaded machine is not taken for a stall.
pub async fn watch_gaps(page: &mut Page, target: (&str, &str)) {
    let js = format!(
        "(() => {{ const v = {}; const g = {{ last: performance.now(), worst: 0, frames: 0, on: true }}; \
         window.campeerGaps = g; \
         const cb = (now) => {{ g.worst = Math.max(g.worst, now - g.last); g.last = now; g.frames++; \
           if (g.on) v.requestVideoFrameCallback(cb); }}; \
         v.requestVideoFrameCallback(cb); return true; }})()",
        target.1
    );
    assert_eq!(page.eval(&js).await, Value::Bool(true), "gap watch started");
}

/// Stop [`watch_gaps`]: the longest gap between presented frames since it started
/// (counting the time since the last frame), ms, and the frames presented.
pub async fn longest_gap(page: &mut Page) -> (f64, u64) {
    let v = page
        .eval(
            "(() => { const g = window.campeerGaps; g.on = false; \
             return JSON.stringify([Math.max(g.worst, performance.now() - g.last), g.frames]); })()",
        )
        .await;
    let v: Value = serde_json::from_str(v.as_str().unwrap_or("[]")).unwrap_or_default();
    (
        v[0].as_f64().unwrap_or(f64::NAN),
        v[1].as_u64().unwrap_or(0),
    )
}
