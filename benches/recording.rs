//! Recording benchmark (a command, not a test): `cargo bench --bench recording`.
//!
//! `campeer run` on the test pattern (1280x720@30, 2,500 kbit/s x264, test tone) with one WHEP
//! player in headless Chromium, on this same 2-core machine, measured twice: recording off,
//! then recording on (10 s segments into a temporary directory). Prints campeer's CPU (% of one
//! core over 15 s, after 5 s to settle) and RSS for each, and what recording wrote; with
//! recording on, also the CPU of the recording pipeline's own threads (named `rec…`), which a
//! whole-process figure drowns in x264's run-to-run noise. The added cost is muxing and
//! writing only: the recording takes the encode the player gets.
//!
//! Exits 1 when the player does not connect or recording writes nothing.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/procstat.rs"]
mod procstat;

use common::whep::{DECODED_JS, play_js, room_parts};
use common::{Browser, TempDir, start_camera};
use procstat::{cpu_percent, cpu_ticks, status_kb};
use serde_json::Value;
use std::time::{Duration, Instant};

/// CPU ticks of `pid`'s threads whose names start with `rec` (the recording pipeline's), by
/// thread id: a segment's threads end when it closes, so callers keep the last reading of each.
fn recording_threads(pid: u32, seen: &mut std::collections::HashMap<u32, u64>) {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for t in tasks.flatten() {
        let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        let name = stat
            .split_once('(')
            .and_then(|(_, r)| r.rsplit_once(')'))
            .map(|(n, _)| n)
            .unwrap_or("");
        if !name.starts_with("rec") {
            continue;
        }
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        seen.insert(tid, field(11) + field(12));
    }
}

/// What one run measured.
struct Run {
    cpu: f64,
    rss: f64,
    written: u64,
    /// The recording threads' CPU, % of one core.
    recording_cpu: f64,
}

/// campeer's CPU and RSS with one player, and the bytes in `dir` after the run.
async fn measure(browser: &Browser, record: Option<&TempDir>) -> Option<Run> {
    let path = record.map(|d| format!("\"{}\"", d.path().display()));
    let mut env = vec![("CAMPEER__RECORD__MIN_FREE_MB", "1".to_string())];
    if let Some(p) = &path {
        env.push(("CAMPEER__RECORD__ENABLED", "true".into()));
        env.push(("CAMPEER__RECORD__PATH", p.clone()));
        env.push(("CAMPEER__RECORD__SEGMENT", "\"10s\"".into()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (cam, url) = start_camera(&[], &env);
    let (base, room, token) = room_parts(&url);
    let mut page = browser.open(&format!("{base}/healthz")).await;
    let r = page.eval(&play_js(&format!("/whep/{room}"), &token)).await;
    if !r.as_str().unwrap_or_default().contains("\"status\":201") {
        println!("  the player was refused: {r}");
        return None;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut before = std::collections::HashMap::new();
    recording_threads(cam.pid(), &mut before);
    let mut during = before.clone();
    let (t0, c0) = (Instant::now(), cpu_ticks(Some(cam.pid())));
    while t0.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        recording_threads(cam.pid(), &mut during);
    }
    let rec_ticks: u64 = during
        .iter()
        .map(|(tid, t)| t.saturating_sub(before.get(tid).copied().unwrap_or(0)))
        .sum();
    let recording_cpu = cpu_percent(rec_ticks, t0.elapsed().as_secs_f64());
    let cpu = cpu_percent(
        cpu_ticks(Some(cam.pid())).saturating_sub(c0),
        t0.elapsed().as_secs_f64(),
    );
    let rss = status_kb(Some(cam.pid()), "VmRSS:") as f64 / 1024.0;
    let s = page.eval(DECODED_JS).await;
    let s: Value = serde_json::from_str(s.as_str().unwrap_or("{}")).unwrap_or_default();
    if s["state"] != "connected" {
        println!("  the player is not connected: {s}");
        return None;
    }
    let written = record
        .and_then(|d| std::fs::read_dir(d.path()).ok())
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    Some(Run {
        cpu,
        rss,
        written,
        recording_cpu,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for the list of tests: there are none.
    }
    let browser = Browser::launch();
    println!("campeer with one WHEP player (1280x720@30 x264, Chromium on this same machine):");
    let Some(off) = measure(&browser, None).await else {
        std::process::exit(1);
    };
    println!(
        "  recording off: campeer CPU {:>5.1} % of a core, RSS {:>5.1} MB",
        off.cpu, off.rss
    );
    let dir = TempDir::new("bench-recording");
    let Some(on) = measure(&browser, Some(&dir)).await else {
        std::process::exit(1);
    };
    println!(
        "  recording on:  campeer CPU {:>5.1} % of a core, RSS {:>5.1} MB; the recording threads {:.2} % of a core; {:.1} MB written in ~20 s",
        on.cpu,
        on.rss,
        on.recording_cpu,
        on.written as f64 / 1e6,
    );
    if on.written == 0 {
        println!("  recording wrote nothing");
        std::process::exit(1);
    }
}
