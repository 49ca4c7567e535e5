//! WHEP benchmark (a command, not a test): `cargo bench --bench whep`.
//!
//! `campeer run` on the test pattern (1280x720@30, 2,500 kbit/s x264, test tone) with WHEP
//! players in headless Chromium tabs on this same 2-core machine:
//! - campeer's CPU (% of one core over 10 s, after 5 s to settle), RSS, and its upload (the
//!   bytes the players received, summed) with 1, 10 and 25 players;
//! - churn: 100 sessions opened, played until connected and DELETEd, one after another; the
//!   viewer count must be back to 0 and RSS back within 16 MB of where it was;
//! - campeer's CPU with one WHEP player, then with 3 `<img>` tabs on `/mjpeg` besides, then
//!   with 5 RTSP clients (ffmpeg over TCP, copying the stream) besides those.
//!
//! `CAMPEER_BENCH_ONLY=outputs` runs only the last part.
//!
//! Exits 1 when a player does not connect, or churn leaves sessions or memory behind.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/procstat.rs"]
mod procstat;

use common::whep::{DECODED_JS, open_and_delete_js, play_js, room_parts};
use common::{Browser, http_get, start_camera};
use procstat::{cpu_percent, cpu_ticks, status_kb};
use serde_json::Value;
use std::time::{Duration, Instant};

/// RSS growth over 100 sessions that counts as a leak.
const CHURN_RSS_BOUND_MB: f64 = 16.0;

fn rss_mb(pid: u32) -> f64 {
    status_kb(Some(pid), "VmRSS:") as f64 / 1024.0
}

fn viewers(metrics: &str) -> usize {
    metrics
        .lines()
        .filter(|l| l.starts_with("campeer_viewer_frames_sent_total{"))
        .count()
}

fn mjpeg_frames(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("campeer_mjpeg_frames_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Bytes received by every player, and how many are connected.
async fn players(pages: &mut [common::Page]) -> (u64, usize) {
    let (mut bytes, mut connected) = (0, 0);
    for p in pages.iter_mut() {
        let s = p.eval(DECODED_JS).await;
        let s: Value = serde_json::from_str(s.as_str().unwrap_or("{}")).unwrap_or_default();
        bytes += s["bytes"].as_u64().unwrap_or(0);
        connected += usize::from(s["state"] == "connected");
    }
    (bytes, connected)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for the list of tests: there are none.
    }
    let only_outputs = std::env::var("CAMPEER_BENCH_ONLY").is_ok_and(|v| v == "outputs");
    let (mut cam, url) = start_camera(
        &[],
        &[
            ("CAMPEER__CAMERA__MAX_VIEWERS", "32"),
            ("CAMPEER__RTSP__ENABLED", "true"),
            ("CAMPEER__RTSP__LISTEN", "\"127.0.0.1:0\""),
            ("CAMPEER__RTSP__PASSWORD", "bench-password"),
        ],
    );
    let pid = cam.pid();
    let rtsp_line = cam.wait_stdout("RTSP: rtsp://", Duration::from_secs(20));
    let rtsp_url = rtsp_line
        .split_whitespace()
        .find(|w| w.starts_with("rtsp://"))
        .unwrap_or_default()
        .replacen("rtsp://", "rtsp://campeer:bench-password@", 1);
    let (base, room, token) = room_parts(&url);
    let whep = format!("/whep/{room}");
    let browser = Browser::launch();
    let mut failed = false;

    if !only_outputs {
        println!(
            "campeer with N WHEP players (1280x720@30 x264, Chromium tabs on this same machine):"
        );
        let mut pages = Vec::new();
        for n in [1usize, 10, 25] {
            while pages.len() < n {
                let mut page = browser.open(&format!("{base}/healthz")).await;
                let r = page.eval(&play_js(&whep, &token)).await;
                if !r.as_str().unwrap_or_default().contains("\"status\":201") {
                    println!("  player {} refused: {r}", pages.len() + 1);
                    failed = true;
                }
                pages.push(page);
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
            let (b0, _) = players(&mut pages).await;
            let (t0, c0) = (Instant::now(), cpu_ticks(Some(pid)));
            tokio::time::sleep(Duration::from_secs(10)).await;
            let secs = t0.elapsed().as_secs_f64();
            let cpu = cpu_percent(cpu_ticks(Some(pid)).saturating_sub(c0), secs);
            let (b1, connected) = players(&mut pages).await;
            let upload = (b1.saturating_sub(b0)) as f64 * 8.0 / secs / 1e6;
            println!(
                "  {n:>2} players: campeer CPU {cpu:>5.1} % of a core, RSS {:>5.1} MB, upload {upload:>5.1} Mbit/s ({:.2} per player); {connected} connected",
                rss_mb(pid),
                upload / n as f64
            );
            failed |= connected != n;
        }
        for mut p in pages.drain(..) {
            if let Some(loc) = p.eval("window.whepLocation").await.as_str() {
                let _ = p
                    .eval(&format!(
                        "fetch({loc:?}, {{ method: 'DELETE' }}).then(r => r.status)"
                    ))
                    .await;
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;

        println!("churn: 100 WHEP sessions opened, connected and deleted in turn:");
        let before = rss_mb(pid);
        let mut page = browser.open(&format!("{base}/healthz")).await;
        let t0 = Instant::now();
        let mut bad = 0;
        for i in 0..100 {
            let r = page.eval(&open_and_delete_js(&whep, &token)).await;
            if r != "200" {
                bad += 1;
                println!("  session {i}: {r}");
            }
        }
        let took = t0.elapsed();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let left = viewers(&http_get(&base, "/metrics").await.1);
        let after = rss_mb(pid);
        println!(
            "  {} of 100 deleted with 200 in {:.1} s ({:.0} ms each); sessions left: {left}; RSS {before:.1} → {after:.1} MB ({:+.1})",
            100 - bad,
            took.as_secs_f64(),
            took.as_secs_f64() * 10.0,
            after - before
        );
        failed |= bad > 0 || left != 0 || after - before > CHURN_RSS_BOUND_MB;
    }

    println!(
        "MJPEG beside WebRTC (one WHEP player, then 3 <img> tabs on /mjpeg at 10 pictures a second):"
    );
    let mut player = browser.open(&format!("{base}/healthz")).await;
    let r = player.eval(&play_js(&whep, &token)).await;
    failed |= !r.as_str().unwrap_or_default().contains("\"status\":201");
    let cpu_over = |secs: u64| async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (t0, c0) = (Instant::now(), cpu_ticks(Some(pid)));
        tokio::time::sleep(Duration::from_secs(secs)).await;
        cpu_percent(
            cpu_ticks(Some(pid)).saturating_sub(c0),
            t0.elapsed().as_secs_f64(),
        )
    };
    let webrtc_only = cpu_over(10).await;
    let mut imgs = Vec::new();
    for _ in 0..3 {
        let mut p = browser.open(&format!("{base}/healthz")).await;
        p.eval(&format!(
            "document.body.innerHTML = '<img src=\"/mjpeg?token={token}\">'; 'ok'"
        ))
        .await;
        imgs.push(p);
    }
    let frames0 = mjpeg_frames(&http_get(&base, "/metrics").await.1);
    let with_mjpeg = cpu_over(10).await;
    let frames = mjpeg_frames(&http_get(&base, "/metrics").await.1) - frames0;
    println!(
        "  WebRTC only: campeer CPU {webrtc_only:>5.1} % of a core; with 3 MJPEG clients: {with_mjpeg:>5.1} % ({frames} JPEGs made in ~15 s, shared by the 3)"
    );
    let rtsp_frames = |m: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix("campeer_rtsp_frames_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let mut clients = Vec::new();
    for _ in 0..5 {
        let c = std::process::Command::new("ffmpeg")
            .args([
                "-nostdin",
                "-v",
                "error",
                "-rtsp_transport",
                "tcp",
                "-i",
                &rtsp_url,
            ])
            .args(["-c", "copy", "-f", "null", "-"])
            .stdin(std::process::Stdio::null())
            .spawn();
        match c {
            Ok(c) => clients.push(c),
            Err(e) => {
                println!("  ffmpeg does not run: {e}");
                failed = true;
            }
        }
    }
    let m0 = http_get(&base, "/metrics").await.1;
    let with_rtsp = cpu_over(10).await;
    let m1 = http_get(&base, "/metrics").await.1;
    let fed = rtsp_frames(&m1) - rtsp_frames(&m0);
    let encoders = m1
        .lines()
        .find_map(|l| l.strip_prefix("campeer_video_encoders_running "))
        .unwrap_or("?")
        .trim()
        .to_owned();
    println!(
        "  and with 5 RTSP clients besides (ffmpeg -c copy over TCP): {with_rtsp:>5.1} % ({fed} frames fed to the RTSP server's one shared media in ~15 s; video encoders running: {encoders})"
    );
    failed |= fed == 0;
    for mut c in clients {
        let _ = c.kill();
        let _ = c.wait();
    }
    drop(cam);
    if failed {
        println!("whep bench: a target was missed");
        std::process::exit(1);
    }
}
