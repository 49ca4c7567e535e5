//! Siege benchmark (a command, not a test): `cargo bench --bench siege` (`scripts/bench siege`).
//!
//! The load test of the security review (issue 18): the release `campeer run` (test pattern,
//! embedded signaling server on loopback) under `RLIMIT_NOFILE` 1024 (soft and hard, as
//! `prlimit` sets it), attacked all at once, for [`SIEGE`], by one core:
//! - 2,000 unauthenticated WebSockets from 100 loopback addresses that never join, each reopened
//!   as soon as the server closes or refuses it;
//! - 300 slowloris connections from 10 addresses: a request line, then one header line every 2 s
//!   and never the blank line, reopened when closed;
//! - six sockets holding the room's viewer token, offering the camera what it must refuse (VP9
//!   only) as fast as their sockets take it, rejoining when closed.
//!
//! Meanwhile a legitimate viewer (webrtc-rs, from 127.0.0.1) calls the camera once a second: it
//! joins, offers, and must get the camera's answer and then decoded pictures. Printed: the time
//! from opening the socket to the answer (p50, p95, max), viewers that got no answer or no
//! picture, whether the room ever lacked its camera (`campeer_signaling_joined`, and each
//! viewer's `created`), the daemon's RSS (max), and what the attackers held and were refused.
//! Exits 1 when a target is missed: the camera out of its room, an unanswered viewer, answers
//! slower than 1 s at p95, RSS over [`RSS_BOUND_MB`], or a panic in the daemon.

#[path = "../tests/common/mod.rs"]
mod common;

use common::rtc_viewer::RtcViewer;
use common::{Campeer, base_of, ws_of};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

const UNAUTHENTICATED: usize = 2_000;
const UNAUTHENTICATED_ADDRESSES: usize = 100;
const SLOWLORIS: usize = 300;
const SLOWLORIS_ADDRESSES: usize = 10;
const FLOODERS: usize = 6;
/// The daemon's file-descriptor limit, soft and hard (systemd's default soft limit).
const NOFILE: u32 = 1024;
/// How long the attack lasts once it is under way.
const SIEGE: Duration = Duration::from_secs(40);
/// Time for the attackers to open their sockets before viewers are measured.
const RAMP: Duration = Duration::from_secs(5);
/// The daemon's RSS must stay under this.
const RSS_BOUND_MB: f64 = 250.0;
/// A viewer's answer must come within this at p95.
const ANSWER_P95: Duration = Duration::from_secs(1);

/// An offer the camera has to refuse (VP9 only, and no VP8 fallback configured).
const VP9_ONLY_OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 98\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=recvonly\r\na=rtpmap:98 VP9/90000\r\n";

#[derive(Default)]
struct Tally {
    unauth_open: AtomicI64,
    unauth_opened: AtomicU64,
    unauth_failed: AtomicU64,
    slow_open: AtomicI64,
    slow_opened: AtomicU64,
    slow_failed: AtomicU64,
    flood_joins: AtomicU64,
    flood_offers: AtomicU64,
    peak_unauth: AtomicI64,
    peak_slow: AtomicI64,
}

fn peak(p: &AtomicI64, now: i64) {
    p.fetch_max(now, Ordering::Relaxed);
}

/// A TCP connection to `to` from the loopback address `from`.
async fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::from((from, 0)))?;
    tokio::time::timeout(Duration::from_secs(5), s.connect(to))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))?
}

/// 127.1.`n / 250`.`n % 250 + 1`, one of the attackers' addresses.
fn attacker(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 1, (n / 250) as u8, (n % 250 + 1) as u8)
}

/// A WebSocket that never joins, reopened whenever it is closed or refused.
async fn unauthenticated(from: Ipv4Addr, to: SocketAddr, ws_url: String, t: Arc<Tally>) {
    loop {
        let ws = match connect_from(from, to).await {
            Ok(tcp) => tokio::time::timeout(
                Duration::from_secs(10),
                tokio_tungstenite::client_async(ws_url.as_str(), tcp),
            )
            .await
            .ok()
            .and_then(Result::ok),
            Err(_) => None,
        };
        match ws {
            Some((mut ws, _)) => {
                t.unauth_opened.fetch_add(1, Ordering::Relaxed);
                let now = t.unauth_open.fetch_add(1, Ordering::Relaxed) + 1;
                peak(&t.peak_unauth, now);
                while let Some(Ok(_)) = ws.next().await {}
                t.unauth_open.fetch_sub(1, Ordering::Relaxed);
            }
            None => {
                t.unauth_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Request headers dripped one line every 2 s, never finished; reopened when closed.
async fn slowloris(from: Ipv4Addr, to: SocketAddr, t: Arc<Tally>) {
    loop {
        match connect_from(from, to).await {
            Ok(mut s) => {
                if s.write_all(b"GET /room/camera HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                    .await
                    .is_ok()
                {
                    t.slow_opened.fetch_add(1, Ordering::Relaxed);
                    let now = t.slow_open.fetch_add(1, Ordering::Relaxed) + 1;
                    peak(&t.peak_slow, now);
                    let mut buf = [0u8; 512];
                    loop {
                        tokio::select! {
                            r = s.read(&mut buf) => match r {
                                Ok(0) | Err(_) => break,
                                Ok(_) => continue,
                            },
                            _ = tokio::time::sleep(Duration::from_secs(2)) => {
                                if s.write_all(b"X-Drip: 1\r\n").await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    t.slow_open.fetch_sub(1, Ordering::Relaxed);
                } else {
                    t.slow_failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => {
                t.slow_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A viewer-token holder offering what the camera must refuse, as fast as the socket takes it.
async fn flooder(from: Ipv4Addr, to: SocketAddr, ws_url: String, token: String, t: Arc<Tally>) {
    loop {
        let Ok(tcp) = connect_from(from, to).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(Ok((ws, _))) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::client_async(ws_url.as_str(), tcp),
        )
        .await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (mut tx, mut rx) = ws.split();
        let join = json!({"type": "join", "room": "camera", "role": "viewer", "token": token});
        if tx.send(Message::text(join.to_string())).await.is_err() {
            continue;
        }
        // The camera's id, from `created`.
        let mut camera = None;
        while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(10), rx.next()).await {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(m.to_text().unwrap_or("")) else {
                continue;
            };
            if v["type"] == "created" {
                camera = v["peers"].as_array().and_then(|p| {
                    p.iter()
                        .find(|p| p["role"] == "camera")
                        .and_then(|p| p["id"].as_str().map(str::to_owned))
                });
                break;
            }
        }
        let Some(camera) = camera else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        t.flood_joins.fetch_add(1, Ordering::Relaxed);
        let reader = tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });
        let offer = json!({"type": "offer", "to": camera, "sdp": VP9_ONLY_OFFER}).to_string();
        let mut n = 0u64;
        while tx.send(Message::text(offer.clone())).await.is_ok() {
            n += 1;
            t.flood_offers.fetch_add(1, Ordering::Relaxed);
            if n % 64 == 0 {
                tokio::task::yield_now().await;
            }
        }
        reader.abort();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `/metrics` from loopback, or `None` when the server did not take the request now.
async fn metrics(base: &str) -> Option<String> {
    let host = base.trim_start_matches("http://");
    let mut s = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(host))
        .await
        .ok()?
        .ok()?;
    let req = format!("GET /metrics HTTP/1.0\r\nHost: {host}\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.lines().next().unwrap_or_default();
    status.contains(" 200 ").then_some(text)
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn raise_own_fd_limit() {
    // SAFETY: getrlimit/setrlimit read and write one rlimit struct that outlives the call.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max.min(200_000);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// One legitimate viewer's call: time to the answer, and whether pictures came.
#[derive(Debug)]
enum Call {
    Watched { answer: Duration },
    NoPicture { answer: Duration },
    NoAnswer(String),
}

async fn call(url: String, retried: &AtomicU64) -> Call {
    let start = Instant::now();
    // As the room page does, a refused or cut socket is tried again after half a second (the
    // page then backs off further); the time counts from the first try. RtcViewer panics on a
    // refused socket or a signaling error: that is a failed try here.
    let mut tries = 0;
    let viewer = loop {
        tries += 1;
        let u = url.clone();
        let joined = tokio::spawn(async move { RtcViewer::connect(&u).await });
        match tokio::time::timeout(Duration::from_secs(10), joined).await {
            Ok(Ok(v)) => break v,
            Ok(Err(e)) if tries < 3 => {
                retried.fetch_add(1, Ordering::Relaxed);
                eprintln!("siege: a viewer's try failed ({e}); trying again in 0.5 s");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Ok(Err(e)) => return Call::NoAnswer(format!("{e}")),
            Err(_) => return Call::NoAnswer("no camera in the room within 10 s".into()),
        }
    };
    let answer = loop {
        if viewer
            .received
            .lock()
            .expect("received lock")
            .answer
            .is_some()
        {
            break Some(start.elapsed());
        }
        if start.elapsed() > Duration::from_secs(10) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let Some(answer) = answer else {
        viewer.close().await;
        return Call::NoAnswer("no answer within 10 s".into());
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pictures = false;
    while Instant::now() < deadline {
        if viewer.frames() >= 5 {
            pictures = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    viewer.close().await;
    if pictures {
        Call::Watched { answer }
    } else {
        Call::NoPicture { answer }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    raise_own_fd_limit();
    let limit = format!("--nofile={NOFILE}:{NOFILE}");
    let mut cam = Campeer::start_under(
        &["prlimit", &limit, "--"],
        &[
            "run",
            "--video",
            "test",
            "--audio",
            "test",
            "--listen",
            "127.0.0.1:0",
        ],
        &[
            ("CAMPEER__VIDEO__WIDTH", "640"),
            ("CAMPEER__VIDEO__HEIGHT", "360"),
            ("CAMPEER__VIDEO__FRAMERATE", "30"),
            ("CAMPEER__VIDEO__FALLBACK", "\"none\""),
            ("CAMPEER__LOG__LEVEL", "campeer=info,warn"),
        ],
    );
    let url = cam.room_url();
    let base = base_of(&url);
    let (ws_url, token) = ws_of(&url);
    let token = token.unwrap_or_default();
    let addr: SocketAddr = base
        .trim_start_matches("http://")
        .parse()
        .expect("the room URL names host:port");
    let pid = cam.pid();
    let daemon_limit = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .map(|l| {
                    l.split_whitespace()
                        .skip(3)
                        .take(2)
                        .collect::<Vec<_>>()
                        .join("/")
                })
        })
        .unwrap_or_default();
    println!("siege: campeer pid {pid}, open-file limit (soft/hard) {daemon_limit}, {base}");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // A viewer gets in before the siege: the baseline.
        let retried = AtomicU64::new(0);
        let before = call(url.clone(), &retried).await;
        println!("siege: before the attack: {before:?}");

        // The attackers: one core of their own.
        let tally = Arc::new(Tally::default());
        let stop = Arc::new(AtomicBool::new(false));
        let attackers = {
            let (t, stop, ws_url, token) = (tally.clone(), stop.clone(), ws_url.clone(), token);
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("attackers' runtime");
                rt.block_on(async move {
                    for i in 0..UNAUTHENTICATED {
                        let from = attacker(i % UNAUTHENTICATED_ADDRESSES);
                        tokio::spawn(unauthenticated(from, addr, ws_url.clone(), t.clone()));
                    }
                    for i in 0..SLOWLORIS {
                        let from = attacker(UNAUTHENTICATED_ADDRESSES + i % SLOWLORIS_ADDRESSES);
                        tokio::spawn(slowloris(from, addr, t.clone()));
                    }
                    for i in 0..FLOODERS {
                        let from = attacker(UNAUTHENTICATED_ADDRESSES + SLOWLORIS_ADDRESSES + i);
                        tokio::spawn(flooder(from, addr, ws_url.clone(), token.clone(), t.clone()));
                    }
                    while !stop.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                });
                // Dropping the runtime closes every attacker's socket.
            })
        };

        // Watch the camera's presence and RSS throughout.
        let watch_stop = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (base, stop) = (base.clone(), watch_stop.clone());
            tokio::spawn(async move {
                let (mut samples, mut unreadable, mut absent, mut rss_max) = (0u32, 0u32, 0u32, 0f64);
                let mut open_max = 0f64;
                while !stop.load(Ordering::Relaxed) {
                    rss_max = rss_max.max(rss_mb(pid));
                    match metrics(&base).await {
                        Some(m) => {
                            samples += 1;
                            if metric(&m, "campeer_signaling_joined") != Some(1.0) {
                                absent += 1;
                            }
                            if let Some(open) = metric(&m, "campeer_signal_open_connections") {
                                open_max = open_max.max(open);
                            }
                        }
                        None => unreadable += 1,
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                (samples, unreadable, absent, rss_max, open_max)
            })
        };

        tokio::time::sleep(RAMP).await;
        println!(
            "siege: after {:.0} s: {} unauthenticated sockets open, {} slowloris, {} flood joins, {} refused offers sent",
            RAMP.as_secs_f64(),
            tally.unauth_open.load(Ordering::Relaxed),
            tally.slow_open.load(Ordering::Relaxed),
            tally.flood_joins.load(Ordering::Relaxed),
            tally.flood_offers.load(Ordering::Relaxed),
        );
        let until = Instant::now() + SIEGE;
        let mut calls = vec![];
        while Instant::now() < until {
            let next = Instant::now() + Duration::from_secs(1);
            calls.push(call(url.clone(), &retried).await);
            tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
        }
        stop.store(true, Ordering::Relaxed);
        watch_stop.store(true, Ordering::Relaxed);
        let _ = attackers.join();
        let (samples, unreadable, absent, rss_max, open_max) =
            watcher.await.expect("the watcher task");
        // And after: the server is itself again.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = call(url.clone(), &retried).await;

        let mut answers: Vec<Duration> = calls
            .iter()
            .filter_map(|c| match c {
                Call::Watched { answer } | Call::NoPicture { answer } => Some(*answer),
                Call::NoAnswer(_) => None,
            })
            .collect();
        answers.sort();
        let unanswered: Vec<&String> = calls
            .iter()
            .filter_map(|c| match c {
                Call::NoAnswer(why) => Some(why),
                _ => None,
            })
            .collect();
        let no_picture = calls
            .iter()
            .filter(|c| matches!(c, Call::NoPicture { .. }))
            .count();
        let (p50, p95, max) = (
            percentile(&answers, 0.5),
            percentile(&answers, 0.95),
            answers.last().copied().unwrap_or_default(),
        );
        println!(
            "siege: attackers held at most {} unauthenticated sockets and {} slowloris connections at once; \
             opened {} and {} in all, {} and {} refused or cut before use; {} flood joins sent {} refused offers",
            tally.peak_unauth.load(Ordering::Relaxed),
            tally.peak_slow.load(Ordering::Relaxed),
            tally.unauth_opened.load(Ordering::Relaxed),
            tally.slow_opened.load(Ordering::Relaxed),
            tally.unauth_failed.load(Ordering::Relaxed),
            tally.slow_failed.load(Ordering::Relaxed),
            tally.flood_joins.load(Ordering::Relaxed),
            tally.flood_offers.load(Ordering::Relaxed),
        );
        println!(
            "siege: legitimate viewers: {} calls ({} sockets tried again), answer p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms; {} unanswered, {} without pictures",
            calls.len(),
            retried.load(Ordering::Relaxed),
            p50.as_secs_f64() * 1e3,
            p95.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3,
            unanswered.len(),
            no_picture,
        );
        for why in &unanswered {
            println!("siege:   unanswered: {why}");
        }
        println!(
            "siege: camera in its room in {}/{} /metrics samples ({unreadable} not served); server held at most {open_max} connections; RSS max {rss_max:.1} MB (bound {RSS_BOUND_MB} MB)",
            samples - absent,
            samples,
        );
        println!("siege: after the attack: {after:?}");
        if let Some(m) = metrics(&base).await {
            let get = |n| metric(&m, n).unwrap_or(-1.0);
            println!(
                "siege: the server refused {} connections and evicted {} unjoined ones to make room",
                get("campeer_signal_refused_connections_total"),
                get("campeer_signal_evicted_connections_total"),
            );
        }

        let logs = cam.logs();
        let panicked = logs.contains("panicked");
        let mut missed = vec![];
        if absent > 0 {
            missed.push(format!("the camera was out of its room in {absent} samples"));
        }
        if !unanswered.is_empty() || answers.is_empty() {
            missed.push(format!("{} viewers got no answer", unanswered.len()));
        }
        if no_picture > 0 {
            missed.push(format!("{no_picture} viewers got no picture"));
        }
        if p95 > ANSWER_P95 {
            missed.push(format!("answer p95 {p95:?} over {ANSWER_P95:?}"));
        }
        if rss_max > RSS_BOUND_MB {
            missed.push(format!("RSS {rss_max:.1} MB over {RSS_BOUND_MB} MB"));
        }
        if panicked {
            missed.push("the daemon panicked".into());
        }
        if !matches!(after, Call::Watched { .. }) {
            missed.push(format!("after the attack: {after:?}"));
        }
        if cam.child.try_wait().ok().flatten().is_some() {
            missed.push("the daemon exited".into());
        }
        if missed.is_empty() {
            println!("siege: every target met");
        } else {
            println!("siege: MISSED: {}", missed.join("; "));
            let path = std::env::temp_dir().join("campeer-siege.log");
            match std::fs::write(&path, &logs) {
                Ok(()) => println!("siege: campeer's log is in {}", path.display()),
                Err(e) => println!("siege: campeer's log could not be written ({e}):\n{logs}"),
            }
            std::process::exit(1);
        }
    });
}
