//! The stamped source of the glass-to-glass benchmarks (latency, soak): a stamper that paints
//! the wall-clock time into every frame it pushes into shared memory, campeer capturing that
//! shared memory, and the page script that reads the time back from each presented frame.
#![allow(dead_code)]

use super::common::{self, Campeer};
use gstreamer as gst;
use gstreamer::prelude::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The stamped picture's width and height.
pub const W: usize = 1280;
pub const H: usize = 720;
/// The stamp: this many bits of Unix milliseconds, one cell of this many pixels each, in the
/// top 32 rows.
pub const CELLS: usize = 48;
pub const CELL: usize = 24;

/// The stamper: 29.97 fps I420 frames with the time painted in, into shared memory.
pub fn start_stamper(socket: &str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    gst::init().expect("gst init");
    let desc = format!(
        "appsrc name=src is-live=true format=time do-timestamp=true \
         caps=video/x-raw,format=I420,width={W},height={H},framerate=30000/1001 ! \
         shmsink socket-path={socket} wait-for-connection=false sync=false shm-size=200000000"
    );
    let pipeline = gst::parse::launch(&desc)
        .expect("stamper pipeline")
        .downcast::<gst::Pipeline>()
        .expect("pipeline");
    let src = pipeline
        .by_name("src")
        .expect("appsrc")
        .downcast::<gstreamer_app::AppSrc>()
        .expect("appsrc");
    pipeline
        .set_state(gst::State::Playing)
        .expect("stamper plays");
    std::thread::spawn(move || {
        let period = Duration::from_nanos(1_001_000_000 / 30);
        let start = Instant::now();
        let mut n: u64 = 0;
        while !stop.load(Ordering::Relaxed) {
            let mut frame = vec![0u8; W * H * 3 / 2];
            // Grey background with a moving bar, so the encoder has motion to code.
            frame[..W * H].fill(96);
            frame[W * H..].fill(128);
            let bar = (n as usize * 8) % W;
            for y in 40..H {
                for x in bar..(bar + 40).min(W) {
                    frame[y * W + x] = 200;
                }
            }
            let ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            for i in 0..CELLS {
                let bit = (ms >> (CELLS - 1 - i)) & 1;
                let v = if bit == 1 { 235 } else { 16 };
                for y in 0..32 {
                    frame[y * W + i * CELL..y * W + (i + 1) * CELL].fill(v);
                }
            }
            if src.push_buffer(gst::Buffer::from_mut_slice(frame)).is_err() {
                break;
            }
            n += 1;
            let next = start + period * n as u32;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let _ = pipeline.set_state(gst::State::Null);
    })
}

/// Injected before the page's own scripts: measures every presented frame.
pub const MEASURE_JS: &str = r#"
(() => {
  const M = window.__g2g = { frames: [], pcCreated: null, firstFrame: null, offset: 0, pcs: [] };
  const Orig = window.RTCPeerConnection;
  const Wrapped = function (...args) {
    if (M.pcCreated === null) M.pcCreated = performance.now();
    const pc = new Orig(...args);
    M.pcs.push(pc);
    return pc;
  };
  Wrapped.prototype = Orig.prototype;
  window.RTCPeerConnection = Wrapped;
  // performance.now() → wall clock: timeOrigin is the high-resolution wall-clock time of the
  // page's time origin (Date.now() has only millisecond steps).
  M.offset = performance.timeOrigin;
  const canvas = document.createElement('canvas');
  canvas.width = 1152; canvas.height = 32;
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  const seen = new WeakSet();
  const watch = (v) => {
    const cb = (now, meta) => {
      try {
        ctx.drawImage(v, 0, 0, 1152, 32, 0, 0, 1152, 32);
        const d = ctx.getImageData(0, 0, 1152, 32).data;
        let ms = 0;
        for (let i = 0; i < 48; i++) {
          const p = (16 * 1152 + i * 24 + 12) * 4;
          ms = ms * 2 + (d[p] > 128 ? 1 : 0);
        }
        const wall = Date.now();
        if (Math.abs(wall - ms) < 10000) {
          if (M.firstFrame === null) M.firstFrame = meta.presentationTime;
          M.frames.push({
            stamp: ms,
            lat: meta.presentationTime + M.offset - ms,
            recv: (meta.receiveTime !== undefined ? meta.receiveTime + M.offset - ms : null),
            rtp: meta.rtpTimestamp,
          });
        }
      } catch (e) { M.error = String(e); }
      v.requestVideoFrameCallback(cb);
    };
    v.requestVideoFrameCallback(cb);
  };
  setInterval(() => document.querySelectorAll('video').forEach((v) => { if (!seen.has(v)) { seen.add(v); watch(v); } }), 50);
})();
"#;

/// Start a campeer daemon reading the stamped shared memory, in latency mode `mode`.
pub fn start_campeer(socket: &str, mode: &str, ip: &str) -> (Campeer, String) {
    let source = format!(
        "pipeline:shmsrc socket-path={socket} is-live=true do-timestamp=true ! video/x-raw,format=I420,width={W},height={H},framerate=30000/1001"
    );
    let listen = format!("{ip}:0");
    let rtc_bind = format!("[\"{ip}:0\"]");
    let mut cam = Campeer::start(
        &[
            "run", "--video", &source, "--listen", &listen, "--room", "g2g",
        ],
        &[
            ("CAMPEER__VIDEO__ENCODER", "x264enc"),
            ("CAMPEER__VIDEO__WIDTH", "1280"),
            ("CAMPEER__VIDEO__HEIGHT", "720"),
            ("CAMPEER__VIDEO__FRAMERATE", "30"),
            ("CAMPEER__VIDEO__BITRATE_KBPS", "2500"),
            ("CAMPEER__CAMERA__MAX_VIEWERS", "40"),
            ("CAMPEER__CAMERA__LATENCY", mode),
            ("CAMPEER__CAMERA__RTC_BIND", &rtc_bind),
            ("CAMPEER__SERVER__OPEN_ROOMS", "[\"*\"]"),
            ("CAMPEER__LOG__LEVEL", "warn"),
        ],
    );
    let url = cam.room_url();
    (cam, common::base_of(&url))
}

/// The `p` quantile (0..1) of `v`, NaN when empty.
pub fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[((s.len() as f64 - 1.0) * p).round() as usize]
}
