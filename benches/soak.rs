//! The one-hour soak (a command, not a test): `cargo bench --bench soak`.
//!
//! One headless Chromium viewer watches a 1280x720@29.97 camera on loopback for an hour, never
//! reloaded. The source is the latency benchmark's stamped clock (`benches/support/stamp.rs`),
//! so every presented frame gives its glass-to-glass latency. Printed per window (5 minutes):
//! g2g p50/p95, frames the page never saw, freezes and frames dropped (Chromium's own counters),
//! campeer's CPU; every minute: campeer's RSS and open file descriptors. At the end, the drift
//! from the first window to the last against the targets: p50 ≤ 5 ms, RSS ≤ 5 %, fds flat,
//! no freeze. Other camera daemons' users report latency creeping from 100 ms to seconds over
//! hours; this is how campeer shows it does not.
//!
//! `CAMPEER_SOAK_MINUTES` (60) and `CAMPEER_SOAK_WINDOW_MINUTES` (5) shorten it for a try.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/procstat.rs"]
mod procstat;
#[path = "support/stamp.rs"]
mod stamp;

use common::{Browser, TempDir};
use procstat::{cpu_percent, cpu_ticks, status_kb};
use serde_json::Value;
use stamp::{MEASURE_JS, pct, start_campeer, start_stamper};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

fn minutes(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|m| *m > 0)
        .unwrap_or(default)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// The frames presented since the last call (taken out of the page), and Chromium's freeze
/// and dropped-frame counters so far.
const TAKE_JS: &str = r#"(async () => {
  const M = window.__g2g;
  let freezes = 0, dropped = 0;
  for (const pc of M.pcs) {
    const r = await pc.getStats();
    r.forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'video') { freezes += s.freezeCount || 0; dropped += s.framesDropped || 0; } });
  }
  return JSON.stringify({ frames: M.frames.splice(0), freezes, dropped, error: M.error || null });
})()"#;

struct Window {
    p50: f64,
    p95: f64,
    frames: usize,
    unseen: usize,
    freezes: u64,
    dropped: u64,
    cpu: f64,
}

fn main() {
    let total = minutes("CAMPEER_SOAK_MINUTES", 60);
    let window = minutes("CAMPEER_SOAK_WINDOW_MINUTES", 5).min(total);
    let dir = TempDir::new("soak");
    let socket = dir.path().join("stamp.shm").display().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let stamper = start_stamper(&socket, stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    println!(
        "campeer soak: one Chromium viewer, 1280x720 @29.97 (stamped clock), x264 2,500 kbit/s, loopback; {total} min in windows of {window} min"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let (cam, base) = start_campeer(&socket, "smooth", "127.0.0.1");
        let pid = cam.pid();
        let browser = Browser::launch();
        let mut page = browser
            .open_with_script(&format!("{base}/room/g2g"), Some(MEASURE_JS))
            .await;
        page.wait_frames(30, Duration::from_secs(60)).await;
        // The first frames (connection set-up) are not part of any window.
        page.eval(TAKE_JS).await;
        let started = Instant::now();
        let mut windows: Vec<Window> = Vec::new();
        let mut memory: Vec<(u64, f64, usize)> = Vec::new();
        let (mut freezes0, mut dropped0) = (0u64, 0u64);
        let mut lats: Vec<f64> = Vec::new();
        let mut stamps: Vec<f64> = Vec::new();
        let mut cpu0 = (Instant::now(), cpu_ticks(Some(pid)));
        for minute in 1..=total {
            tokio::time::sleep_until((started + Duration::from_secs(60 * minute)).into()).await;
            let rss = status_kb(Some(pid), "VmRSS:") as f64 / 1024.0;
            let fd = fds(pid);
            memory.push((minute, rss, fd));
            let v: Value =
                serde_json::from_str(page.eval(TAKE_JS).await.as_str().unwrap_or("{}"))
                    .unwrap_or_default();
            if let Some(e) = v["error"].as_str() {
                eprintln!("page error: {e}");
            }
            let mut last_rtp = None;
            for f in v["frames"].as_array().into_iter().flatten() {
                // A frame drawn twice shows an RTP time that does not move forward.
                let rtp = f["rtp"].as_u64();
                if let (Some(a), Some(b)) = (last_rtp, rtp)
                    && b <= a
                {
                    continue;
                }
                last_rtp = rtp.or(last_rtp);
                lats.push(f["lat"].as_f64().unwrap_or(f64::NAN));
                stamps.push(f["stamp"].as_f64().unwrap_or(0.0));
            }
            println!("minute {minute:>3}: RSS {rss:.1} MB, {fd} fds");
            if minute % window == 0 || minute == total {
                let (freezes, dropped) = (
                    v["freezes"].as_u64().unwrap_or(0),
                    v["dropped"].as_u64().unwrap_or(0),
                );
                let unseen = match (stamps.first(), stamps.last()) {
                    (Some(a), Some(b)) => (((b - a) / (1001.0 / 30.0)).round() as usize + 1)
                        .saturating_sub(stamps.len()),
                    _ => 0,
                };
                let cpu = cpu_percent(
                    cpu_ticks(Some(pid)).saturating_sub(cpu0.1),
                    cpu0.0.elapsed().as_secs_f64(),
                );
                let w = Window {
                    p50: pct(&lats, 0.5),
                    p95: pct(&lats, 0.95),
                    frames: lats.len(),
                    unseen,
                    freezes: freezes - freezes0.min(freezes),
                    dropped: dropped - dropped0.min(dropped),
                    cpu,
                };
                println!(
                    "window to minute {minute:>3}: g2g p50 {:.1} ms  p95 {:.1} ms  frames {}  unseen {}  freezes {}  dropped {}  CPU {:.1} %",
                    w.p50, w.p95, w.frames, w.unseen, w.freezes, w.dropped, w.cpu
                );
                windows.push(w);
                (freezes0, dropped0) = (freezes, dropped);
                lats.clear();
                stamps.clear();
                cpu0 = (Instant::now(), cpu_ticks(Some(pid)));
            }
        }
        let (Some(first), Some(last)) = (windows.first(), windows.last()) else {
            return;
        };
        let (Some(m0), Some(m1)) = (memory.first(), memory.last()) else {
            return;
        };
        let p50_drift = last.p50 - first.p50;
        let rss_drift = 100.0 * (m1.1 - m0.1) / m0.1;
        let freezes: u64 = windows.iter().map(|w| w.freezes).sum();
        let verdict = |ok: bool| if ok { "ok" } else { "MISSED" };
        println!(
            "soak: g2g p50 {:.1} → {:.1} ms (drift {p50_drift:+.1} ms, target ≤ 5: {}); RSS {:.1} → {:.1} MB (after minute {}; {rss_drift:+.1} %, target ≤ 5 %: {}); fds {} → {} ({}); freezes {freezes} ({})",
            first.p50,
            last.p50,
            verdict(p50_drift.abs() <= 5.0),
            m0.1,
            m1.1,
            m0.0,
            verdict(rss_drift <= 5.0),
            m0.2,
            m1.2,
            verdict(m1.2 <= m0.2),
            verdict(freezes == 0),
        );
        drop(page);
        drop(browser);
        drop(cam);
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = stamper.join();
}
