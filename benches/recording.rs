//! Outputs benchmark (a command, not a test): `cargo bench --bench recording`.
//!
//! `campeer run` on the test pattern (1280x720@30, 2,500 kbit/s x264, test tone) with one WHEP
//! player in headless Chromium, on this same 2-core machine, measured three times: live viewing
//! alone; with recording (10 s segments into a temporary directory); with recording, an RTMP
//! push to a local nginx-rtmp and an HLS client (playlist and newest segment fetched every
//! second). Prints campeer's CPU (% of one core over 15 s, after 5 s to settle) and RSS for
//! each, and the CPU of each output's own pipeline threads (their names start with `rec`,
//! `hls`, `rtmp`), which a whole-process figure drowns in x264's run-to-run noise. The added
//! cost is muxing (and for RTMP and HLS an Opus decode and AAC encode): no second video encode.
//!
//! Exits 1 when the player does not connect or an output produces nothing.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/procstat.rs"]
mod procstat;

use common::nginx::{Nginx, free_port};
use common::whep::{DECODED_JS, play_js, room_parts};
use common::{Browser, TempDir, http_get, start_camera};
use procstat::{cpu_percent, cpu_ticks, status_kb};
use serde_json::Value;
use std::time::{Duration, Instant};

/// The thread name prefixes of the outputs' pipelines.
const OUTPUTS: [&str; 3] = ["rec", "hls", "rtmp"];

/// CPU ticks of `pid`'s output threads (names starting with one of [`OUTPUTS`]), by thread id
/// and prefix: a segment's threads end when it closes, so callers keep the last reading.
fn output_threads(pid: u32, seen: &mut std::collections::HashMap<u32, (usize, u64)>) {
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
        let Some(kind) = OUTPUTS.iter().position(|p| name.starts_with(p)) else {
            continue;
        };
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        seen.insert(tid, (kind, field(11) + field(12)));
    }
}

/// What one run measured.
struct Run {
    cpu: f64,
    rss: f64,
    written: u64,
    /// Each output's threads' CPU, % of one core, in [`OUTPUTS`] order.
    outputs_cpu: [f64; 3],
}

/// What a run turns on besides the WHEP player.
#[derive(Clone, Copy)]
struct Outputs<'a> {
    record: Option<&'a TempDir>,
    /// The port of an nginx-rtmp to push to.
    rtmp: Option<u16>,
    hls: bool,
}

/// campeer's CPU and RSS with one player and `outputs`, and the bytes recorded.
async fn measure(browser: &Browser, outputs: Outputs<'_>) -> Option<Run> {
    let record = outputs.record;
    let path = record.map(|d| format!("\"{}\"", d.path().display()));
    let mut env = vec![("CAMPEER__RECORD__MIN_FREE_MB", "1".to_string())];
    if let Some(p) = &path {
        env.push(("CAMPEER__RECORD__ENABLED", "true".into()));
        env.push(("CAMPEER__RECORD__PATH", p.clone()));
        env.push(("CAMPEER__RECORD__SEGMENT", "\"10s\"".into()));
    }
    if let Some(port) = outputs.rtmp {
        env.push((
            "CAMPEER__RTMP",
            format!("[{{url=\"rtmp://127.0.0.1:{port}/live/bench\"}}]"),
        ));
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
    // An HLS player: the playlist and its newest segment, every second.
    let hls_client = outputs.hls.then(|| {
        let (base, room, token) = (base.clone(), room.clone(), token.clone());
        tokio::spawn(async move {
            let mut segments = 0u64;
            loop {
                let (_, list) =
                    http_get(&base, &format!("/hls/{room}/index.m3u8?token={token}")).await;
                if let Some(seg) = list.lines().rev().find(|l| l.starts_with("segment")) {
                    let (status, _) = http_get(&base, &format!("/hls/{room}/{seg}")).await;
                    segments += u64::from(status == 200);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                if segments > 1_000_000 {
                    return segments;
                }
            }
        })
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut before = std::collections::HashMap::new();
    output_threads(cam.pid(), &mut before);
    let mut during = before.clone();
    let (t0, c0) = (Instant::now(), cpu_ticks(Some(cam.pid())));
    while t0.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        output_threads(cam.pid(), &mut during);
    }
    let mut outputs_ticks = [0u64; 3];
    for (tid, (kind, t)) in &during {
        let was = before.get(tid).map(|(_, t)| *t).unwrap_or(0);
        outputs_ticks[*kind] += t.saturating_sub(was);
    }
    let outputs_cpu = outputs_ticks.map(|t| cpu_percent(t, t0.elapsed().as_secs_f64()));
    if let Some(h) = hls_client {
        h.abort();
    }
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
    let (_, metrics) = http_get(&base, "/metrics").await;
    if outputs.rtmp.is_some() && !metrics.contains("campeer_rtmp_up{") {
        println!("  no RTMP push in /metrics");
        return None;
    }
    if outputs.rtmp.is_some()
        && !metrics
            .lines()
            .any(|l| l.starts_with("campeer_rtmp_up{") && l.ends_with(" 1"))
    {
        println!("  the RTMP push is not up");
        return None;
    }
    if outputs.hls && !metrics.contains("campeer_hls_running 1") {
        println!("  HLS is not running");
        return None;
    }
    Some(Run {
        cpu,
        rss,
        written,
        outputs_cpu,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for the list of tests: there are none.
    }
    let browser = Browser::launch();
    println!("campeer with one WHEP player (1280x720@30 x264, Chromium on this same machine):");
    let none = Outputs {
        record: None,
        rtmp: None,
        hls: false,
    };
    let Some(live) = measure(&browser, none).await else {
        std::process::exit(1);
    };
    println!(
        "  live viewing alone:          campeer CPU {:>5.1} % of a core, RSS {:>5.1} MB",
        live.cpu, live.rss
    );
    let dir = TempDir::new("bench-recording");
    let rec = Outputs {
        record: Some(&dir),
        ..none
    };
    let Some(on) = measure(&browser, rec).await else {
        std::process::exit(1);
    };
    println!(
        "  + recording:                 campeer CPU {:>5.1} % of a core, RSS {:>5.1} MB; recording threads {:.2} %; {:.1} MB written in ~20 s",
        on.cpu,
        on.rss,
        on.outputs_cpu[0],
        on.written as f64 / 1e6,
    );
    if on.written == 0 {
        println!("  recording wrote nothing");
        std::process::exit(1);
    }
    let port = free_port();
    let _nginx = Nginx::start(port);
    let dir = TempDir::new("bench-recording-all");
    let all = Outputs {
        record: Some(&dir),
        rtmp: Some(port),
        hls: true,
    };
    let Some(all) = measure(&browser, all).await else {
        std::process::exit(1);
    };
    println!(
        "  + recording + RTMP + HLS:    campeer CPU {:>5.1} % of a core, RSS {:>5.1} MB; threads: recording {:.2} %, HLS {:.2} %, RTMP {:.2} % ({:.2} % together)",
        all.cpu,
        all.rss,
        all.outputs_cpu[0],
        all.outputs_cpu[1],
        all.outputs_cpu[2],
        all.outputs_cpu.iter().sum::<f64>(),
    );
}
