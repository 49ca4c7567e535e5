//! Glass-to-glass latency benchmark (a command, not a test): `cargo bench --bench latency`.
//!
//! Method (see docs/PERFORMANCE.md): a stamper paints the wall-clock time (ms since the epoch)
//! as a row of 48 black/white cells into each 1280x720 frame just before pushing it, at 29.97
//! fps, into shared memory (`shmsink`). campeer captures it as a `pipeline:shmsrc …` source and
//! encodes with x264 (ultrafast, zerolatency, 2.5 Mbit/s); GStreamer's webrtcbin, driven by
//! `benches/webrtcbin_camera.py`, reads the same shared memory with the same x264 settings. The
//! viewer is campeer's own room page in headless Chromium, with a measuring script injected
//! before the page's scripts: `requestVideoFrameCallback` → draw → decode the cells → latency =
//! presentation time (mapped to wall clock) − stamp. Runs alternate between the two senders.
//!
//! Prints, per sender: glass-to-glass p50/p95/max over ≥ 900 frames (first 30 skipped),
//! stamp → last packet received p50, frames the page never saw, freezes, time to first frame
//! (first `new RTCPeerConnection()` → first presented frame), and the sender's CPU and RSS.
//! All of that twice: on loopback, then with the browser in a network namespace behind an
//! impaired link (20 ms ± 10 ms delay, 1 % loss, each direction: `tests/common/impair.rs`, a
//! userspace netem, since this machine's kernel has no `sch_netem`). `CAMPEER_BENCH_NET` =
//! `loopback` or `impaired` runs one of them only.
//! Then campeer's CPU and RSS with 1, 5, 10 and 25 viewers (loopback).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/procstat.rs"]
mod procstat;
#[path = "support/stamp.rs"]
mod stamp;

use common::{Browser, Page, TempDir, impair};
use procstat::{cpu_percent, status_kb};
use stamp::{H, MEASURE_JS, W, pct, start_campeer, start_stamper};

fn cpu_ticks(pid: u32) -> u64 {
    procstat::cpu_ticks(Some(pid))
}

fn rss_mb(pid: u32) -> f64 {
    status_kb(Some(pid), "VmRSS:") as f64 / 1024.0
}
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Presented frames per run (≥ 900 after the first 30); CAMPEER_BENCH_FRAMES overrides.
fn frames_per_run() -> usize {
    std::env::var("CAMPEER_BENCH_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(930)
}
const KBPS: u32 = 2500;

const RESULT_JS: &str = r#"(async () => {
  const M = window.__g2g;
  let freezes = 0, dropped = 0;
  for (const pc of M.pcs) {
    const r = await pc.getStats();
    r.forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'video') { freezes += s.freezeCount || 0; dropped += s.framesDropped || 0; } });
  }
  return JSON.stringify({ frames: M.frames, ttff: M.firstFrame !== null && M.pcCreated !== null ? M.firstFrame - M.pcCreated : null, freezes, dropped, error: M.error || null });
})()"#;

#[derive(Default, Debug)]
struct RunResult {
    lat: Vec<f64>,
    recv: Vec<f64>,
    unseen: usize,
    freezes: u64,
    dropped: u64,
    ttff: f64,
    cpu: f64,
    rss_mb: f64,
}

/// One measured run: open the room page, wait for FRAMES presented frames, collect.
async fn measure(browser: &Browser, url: &str, sender: &AtomicU32) -> RunResult {
    let mut page: Page = browser.open_with_script(url, Some(MEASURE_JS)).await;
    let started = Instant::now();
    let mut cpu0 = None;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let n = page
            .eval("window.__g2g ? window.__g2g.frames.length : 0")
            .await
            .as_u64()
            .unwrap_or(0) as usize;
        if n >= 30 && cpu0.is_none() {
            cpu0 = Some((Instant::now(), cpu_ticks(sender.load(Ordering::Relaxed))));
        }
        if n >= frames_per_run() {
            break;
        }
        if started.elapsed() > Duration::from_secs(90) {
            eprintln!("run timed out with {n} frames");
            break;
        }
    }
    let sender_pid = sender.load(Ordering::Relaxed);
    let (t0, c0) = cpu0.unwrap_or((started, cpu_ticks(sender_pid)));
    let cpu = cpu_percent(
        cpu_ticks(sender_pid).saturating_sub(c0),
        t0.elapsed().as_secs_f64(),
    );
    let v: Value = serde_json::from_str(page.eval(RESULT_JS).await.as_str().unwrap_or("{}"))
        .unwrap_or_default();
    page.cdp
        .call("Page.navigate", json!({ "url": "about:blank" }))
        .await;
    let frames = v["frames"].as_array().cloned().unwrap_or_default();
    let frames: Vec<&Value> = frames.iter().skip(30).collect();
    let mut r = RunResult {
        freezes: v["freezes"].as_u64().unwrap_or(0),
        dropped: v["dropped"].as_u64().unwrap_or(0),
        ttff: v["ttff"].as_f64().unwrap_or(f64::NAN),
        cpu,
        rss_mb: rss_mb(sender_pid),
        ..Default::default()
    };
    let mut last_rtp: Option<u64> = None;
    let mut stamps = Vec::new();
    for f in &frames {
        // A frame drawn from the next one shows up as a repeated/older RTP time: skip those.
        let rtp = f["rtp"].as_u64();
        if let (Some(a), Some(b)) = (last_rtp, rtp) {
            if b <= a {
                continue;
            }
        }
        last_rtp = rtp.or(last_rtp);
        r.lat.push(f["lat"].as_f64().unwrap_or(f64::NAN));
        if let Some(x) = f["recv"].as_f64() {
            r.recv.push(x);
        }
        stamps.push(f["stamp"].as_f64().unwrap_or(0.0));
    }
    if let (Some(first), Some(last)) = (stamps.first(), stamps.last()) {
        let expected = ((last - first) / (1001.0 / 30.0)).round() as usize + 1;
        r.unseen = expected.saturating_sub(stamps.len());
    }
    if let Some(e) = v["error"].as_str() {
        eprintln!("page error: {e}");
    }
    r
}

fn summary(name: &str, runs: &[RunResult]) {
    let lat: Vec<f64> = runs.iter().flat_map(|r| r.lat.iter().copied()).collect();
    let recv: Vec<f64> = runs.iter().flat_map(|r| r.recv.iter().copied()).collect();
    let per_run: Vec<String> = runs
        .iter()
        .map(|r| format!("{:.1}", pct(&r.lat, 0.5)))
        .collect();
    let ttff: Vec<String> = runs.iter().map(|r| format!("{:.0}", r.ttff)).collect();
    let unseen: Vec<String> = runs.iter().map(|r| r.unseen.to_string()).collect();
    println!(
        "{name:<10} frames {:>5}  p50 {:>5.1} ms (runs: {})  p95 {:>5.1}  max {:>5.1}  recv p50 {:>4.1}  unseen {:>3} ({})  freezes {}  dropped {}  TTFF ms [{}]  CPU {:.1} %  RSS {:.0} MB",
        lat.len(),
        pct(&lat, 0.5),
        per_run.join(", "),
        pct(&lat, 0.95),
        lat.iter().copied().fold(f64::NAN, f64::max),
        pct(&recv, 0.5),
        runs.iter().map(|r| r.unseen).sum::<usize>(),
        unseen.join(", "),
        runs.iter().map(|r| r.freezes).sum::<u64>(),
        runs.iter().map(|r| r.dropped).sum::<u64>(),
        ttff.join(", "),
        runs.iter().map(|r| r.cpu).sum::<f64>() / runs.len().max(1) as f64,
        runs.iter().map(|r| r.rss_mb).fold(0.0, f64::max),
    );
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One webrtcbin sender process (a fresh one per viewer offer).
struct GstSender {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
}

fn spawn_webrtcbin(
    socket: &str,
    generation: u64,
    out: tokio::sync::mpsc::UnboundedSender<(u64, Value)>,
) -> GstSender {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/webrtcbin_camera.py");
    let mut child = Command::new("/usr/bin/python3")
        .args([script, socket, &W.to_string(), &H.to_string(), &KBPS.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 webrtcbin_camera.py (python3-gi, gir1.2-gst-plugins-bad-1.0, gstreamer1.0-nice)");
    let stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = out.send((generation, v));
            }
        }
    });
    GstSender { child, stdin }
}

/// Joins room `room` as a camera and relays signaling to and from a webrtcbin process started
/// for each viewer's offer. Returns the current process's pid (for CPU and RSS).
async fn relay_webrtcbin(ws_url: String, room: &str, socket: String) -> Arc<AtomicU32> {
    let (mut ws, _): (Ws, _) =
        tokio_tungstenite::connect_async_with_config(ws_url.as_str(), None, true)
            .await
            .expect("ws");
    let join = json!({"type": "join", "room": room, "role": "camera", "name": "webrtcbin"});
    ws.send(Message::Text(join.to_string().into()))
        .await
        .unwrap();
    let pid = Arc::new(AtomicU32::new(0));
    let current_pid = pid.clone();
    tokio::spawn(async move {
        let (out_tx, mut out_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Value)>();
        let mut sender: Option<GstSender> = None;
        let mut generation = 0u64;
        let mut viewer: Option<String> = None;
        loop {
            tokio::select! {
                m = ws.next() => {
                    let t = match m {
                        Some(Ok(Message::Text(t))) => t,
                        Some(_) => continue,
                        None => break,
                    };
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                    match v["type"].as_str() {
                        Some("offer") => {
                            if let Some(mut old) = sender.take() {
                                let _ = old.child.kill();
                                let _ = old.child.wait();
                            }
                            generation += 1;
                            let mut s = spawn_webrtcbin(&socket, generation, out_tx.clone());
                            current_pid.store(s.child.id(), Ordering::Relaxed);
                            viewer = v["from"].as_str().map(str::to_owned);
                            let _ = writeln!(s.stdin, "{}", json!({"type": "offer", "sdp": v["sdp"]}));
                            sender = Some(s);
                        }
                        Some("exit") if v["from"].as_str() == viewer.as_deref() => {
                            // The viewer left: stop encoding so the next sender runs alone.
                            if let Some(mut old) = sender.take() {
                                let _ = old.child.kill();
                                let _ = old.child.wait();
                            }
                        }
                        Some("candidate") if v["from"].as_str() == viewer.as_deref() => {
                            if let Some(s) = sender.as_mut() {
                                let _ = writeln!(s.stdin, "{}", json!({"type": "candidate", "candidate": v["candidate"]}));
                            }
                        }
                        _ => {}
                    }
                }
                Some((g, v)) = out_rx.recv() => {
                    let Some(to) = viewer.clone().filter(|_| g == generation) else { continue };
                    let msg = match v["type"].as_str() {
                        Some("answer") => json!({"type": "answer", "to": to, "sdp": v["sdp"]}),
                        Some("candidate") => json!({"type": "candidate", "to": to, "candidate": v["candidate"]}),
                        _ => continue,
                    };
                    let _ = ws.send(Message::Text(msg.to_string().into())).await;
                }
            }
        }
        if let Some(mut old) = sender.take() {
            let _ = old.child.kill();
            let _ = old.child.wait();
        }
    });
    pid
}

async fn viewers_load(browser: &Browser, url: &str, pid: u32) {
    println!(
        "campeer with N viewers (1280x720@29.97 x264, all Chromium tabs on this same 2-core machine):"
    );
    let mut pages = Vec::new();
    for n in [1usize, 5, 10, 25] {
        while pages.len() < n {
            pages.push(browser.open(url).await);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (t0, c0) = (Instant::now(), cpu_ticks(pid));
        tokio::time::sleep(Duration::from_secs(15)).await;
        let cpu = cpu_percent(
            cpu_ticks(pid).saturating_sub(c0),
            t0.elapsed().as_secs_f64(),
        );
        let mut connected = 0;
        let mut dropped = 0;
        for p in pages.iter_mut() {
            let v = p
                .eval("(async()=>{let d=0,c=0;for(const [,cam] of window.campeer.cams){if(cam.pc.connectionState==='connected')c++;const r=await cam.pc.getStats();r.forEach(s=>{if(s.type==='inbound-rtp'&&s.kind==='video')d+=s.framesDropped||0})}return JSON.stringify([c,d])})()")
                .await;
            let a: Vec<u64> =
                serde_json::from_str(v.as_str().unwrap_or("[0,0]")).unwrap_or_default();
            connected += a.first().copied().unwrap_or(0);
            dropped += a.get(1).copied().unwrap_or(0);
        }
        println!(
            "  {n:>2} viewers: campeer CPU {cpu:>5.1} % of a core, RSS {:>5.1} MB; {connected} connected; frames dropped by the browsers: {dropped}",
            rss_mb(pid)
        );
    }
}

/// Where the browser is and how it reaches the senders.
struct Net {
    /// Printed with the results.
    label: String,
    /// The address the senders listen on and the browser calls.
    ip: &'static str,
    /// The namespace behind the impaired link, if any (the browser runs there).
    impaired: Option<impair::ImpairedNs>,
}

/// The three senders, `runs` rotating rounds, on one network; prints the summary.
async fn measure_net(net: &Net, socket: &str, runs: usize) {
    println!("--- {} ---", net.label);
    // webrtcbin joins a room on a campeer server that sends no media of its own.
    let listen = format!("{}:0", net.ip);
    let (signal, sbase) = common::start_server_on(&listen, "[\"*\"]");
    let gst_pid = relay_webrtcbin(
        format!("{}/ws", sbase.replace("http://", "ws://")),
        "g2g",
        socket.to_owned(),
    )
    .await;
    let browser = Browser::launch_in(net.impaired.as_ref().map(|n| n.ns.as_str()));
    let modes = ["lowest", "smooth"];
    {
        // Warm-up, not counted: a cold browser's first call is slower for any sender.
        let (cam, base) = start_campeer(socket, "smooth", net.ip);
        let mut page = browser.open(&format!("{base}/room/g2g")).await;
        page.wait_frames(30, Duration::from_secs(30)).await;
        page.cdp
            .call("Page.navigate", json!({ "url": "about:blank" }))
            .await;
        drop(cam);
    }
    let mut results: Vec<Vec<RunResult>> = vec![Vec::new(), Vec::new(), Vec::new()];
    for i in 0..runs {
        // Rotate the order so no sender always runs first.
        for k in 0..3 {
            let which = (i + k) % 3;
            let r = if which < 2 {
                let (cam, base) = start_campeer(socket, modes[which], net.ip);
                let pid = AtomicU32::new(cam.pid());
                let r = measure(&browser, &format!("{base}/room/g2g"), &pid).await;
                drop(cam);
                r
            } else {
                measure(&browser, &format!("{sbase}/room/g2g"), &gst_pid).await
            };
            eprintln!(
                "run {i} {}: p50 {:.1} ms",
                ["campeer lowest", "campeer smooth", "webrtcbin"][which],
                pct(&r.lat, 0.5)
            );
            results[which].push(r);
        }
    }
    summary("lowest", &results[0]);
    summary("smooth", &results[1]);
    summary("webrtcbin", &results[2]);
    let all =
        |rs: &[RunResult]| -> Vec<f64> { rs.iter().flat_map(|r| r.lat.iter().copied()).collect() };
    let ttff = |rs: &[RunResult]| -> Vec<f64> { rs.iter().map(|r| r.ttff).collect() };
    let g = all(&results[2]);
    for (name, rs) in [("lowest", &results[0]), ("smooth", &results[1])] {
        let c = all(rs);
        println!(
            "ratios {name}/webrtcbin: p50 {:.2}, p95 {:.2}, time to first frame {:.2}",
            pct(&c, 0.5) / pct(&g, 0.5),
            pct(&c, 0.95) / pct(&g, 0.95),
            pct(&ttff(rs), 0.5) / pct(&ttff(&results[2]), 0.5)
        );
    }
    if let Some(link) = &net.impaired {
        println!("link: {}", link.report());
    }
    drop(browser);
    drop(signal);
}

fn main() {
    let runs: usize = std::env::var("CAMPEER_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = TempDir::new("latency");
    let socket = dir.path().join("stamp.shm").display().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let stamper = start_stamper(&socket, stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    println!(
        "campeer glass-to-glass benchmark: 1280x720 @29.97, x264 ultrafast zerolatency {KBPS} kbit/s, headless Chromium; {runs} rotating runs of {} frames per sender, one sender at a time",
        frames_per_run()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let which = std::env::var("CAMPEER_BENCH_NET").unwrap_or_else(|_| "both".into());
    let imp = impair::Impairment {
        delay: Duration::from_millis(20),
        jitter: Duration::from_millis(10),
        jitter_period: Duration::ZERO,
        loss: 0.01,
    };
    rt.block_on(async {
        if which != "impaired" {
            let net = Net {
                label: "loopback".into(),
                ip: "127.0.0.1",
                impaired: None,
            };
            measure_net(&net, &socket, runs).await;
        }
        if which != "loopback" {
            let tag = format!("g2g{:04x}", rand::random::<u16>());
            let net = Net {
                label: format!(
                    "impaired link: the browser in a network namespace, {imp} (userspace netem: tests/common/impair.rs)"
                ),
                ip: impair::HOST_IP,
                impaired: Some(impair::ImpairedNs::new(&tag, imp)),
            };
            measure_net(&net, &socket, runs).await;
        }
        if std::env::var_os("CAMPEER_BENCH_SKIP_VIEWERS").is_none() {
            let browser = Browser::launch();
            let (cam, base) = start_campeer(&socket, "lowest", "127.0.0.1");
            viewers_load(&browser, &format!("{base}/room/g2g"), cam.pid()).await;
        }
    });
    stop.store(true, Ordering::Relaxed);
    let _ = stamper.join();
}
