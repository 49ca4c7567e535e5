//! Signaling server benchmark (a command, not a test): `cargo bench --bench signaling`.
//!
//! Starts the real `campeer serve` binary on loopback, opens 1,000 and then 10,000 WebSocket
//! clients that join rooms in camera/viewer pairs, and prints:
//! - the server's RSS per idle joined connection and connections held per GB of RSS;
//! - relay latency (viewer `offer` sent → camera receives it), p50 / p99 / max, while all the
//!   other connections stay open.

#[path = "support/procstat.rs"]
mod procstat;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn raise_fd_limit() {
    // SAFETY: plain getrlimit/setrlimit on this process.
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

fn rss_kb(pid: u32) -> u64 {
    procstat::status_kb(Some(pid), "VmRSS:")
}

async fn recv(ws: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                return serde_json::from_str(t.as_str()).expect("json");
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("connection failed: {other:?}"),
        }
    }
}

async fn join(url: &str, room: &str, role: &str) -> (Ws, String) {
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .expect("connect");
    ws.send(Message::Text(
        json!({"type": "join", "room": room, "role": role})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    loop {
        let m = recv(&mut ws).await;
        if m["type"] == "created" {
            return (ws, m["id"].as_str().unwrap().to_owned());
        }
        assert_ne!(m["type"], "error", "{m}");
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn round(url: &str, pid: u32, clients: usize) {
    let base = rss_kb(pid);
    let t = Instant::now();
    // Pairs: a camera and a viewer per room.
    let mut cams: Vec<(Ws, String)> = Vec::with_capacity(clients / 2);
    let mut viewers: Vec<(Ws, String)> = Vec::with_capacity(clients / 2);
    for i in 0..clients / 2 {
        let room = format!("room{i}");
        cams.push(join(url, &room, "camera").await);
        let v = join(url, &room, "viewer").await;
        // The camera's `joined` for this viewer.
        let j = recv(&mut cams[i].0).await;
        assert_eq!(j["type"], "joined");
        viewers.push(v);
    }
    let connect_time = t.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = rss_kb(pid);
    let per_conn_kb = (held.saturating_sub(base)) as f64 / clients as f64;
    let per_gb = if per_conn_kb > 0.0 {
        1024.0 * 1024.0 / per_conn_kb
    } else {
        f64::INFINITY
    };

    // Relay latency: 2,000 offers from viewers across the whole set, 8 in flight at once.
    let mut lat = Vec::new();
    let pairs = cams.len();
    let sdp = "v=0\r\n".repeat(200); // ~1 KB, the size of a small SDP
    for batch in 0..250 {
        let mut sent = Vec::new();
        for k in 0..8 {
            let i = (batch * 8 + k) * 7919 % pairs;
            let cam_id = cams[i].1.clone();
            let msg = json!({"type": "offer", "to": cam_id, "sdp": sdp}).to_string();
            viewers[i].0.send(Message::Text(msg.into())).await.unwrap();
            sent.push((i, Instant::now()));
        }
        for (i, at) in sent {
            let m = recv(&mut cams[i].0).await;
            assert_eq!(m["type"], "offer");
            lat.push(at.elapsed());
        }
    }
    lat.sort();
    println!(
        "{clients:>6} clients: joined in {:.1} s; server RSS {:.1} MB idle → {:.1} MB ({per_conn_kb:.1} kB per connection, ~{:.0} connections per GB); relay latency p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms over {} offers",
        connect_time.as_secs_f64(),
        base as f64 / 1024.0,
        held as f64 / 1024.0,
        per_gb,
        pct(&lat, 0.5).as_secs_f64() * 1e3,
        pct(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().unwrap().as_secs_f64() * 1e3,
        lat.len()
    );
    drop(cams);
    drop(viewers);
    tokio::time::sleep(Duration::from_secs(2)).await;
}

fn main() {
    raise_fd_limit();
    let dir = std::env::temp_dir().join(format!("campeer-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_campeer"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("CAMPEER__SERVER__OPEN_ROOMS", "[\"*\"]")
        .env("CAMPEER__SERVER__MAX_ROOMS", "100000")
        .env("CAMPEER__SERVER__IDLE_TIMEOUT", "\"10m\"")
        .env(
            "CAMPEER__SERVER__SECRET_FILE",
            format!("\"{}\"", dir.join("secret").display()),
        )
        .env("CAMPEER__LOG__LEVEL", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start campeer serve");
    let pid = server.id();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .expect("address")
        .to_owned();
    let url = format!("ws://{addr}/ws");
    println!(
        "campeer serve (pid {pid}) on {addr}; this machine: {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        round(&url, pid, 1_000).await;
        round(&url, pid, 10_000).await;
    });
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
